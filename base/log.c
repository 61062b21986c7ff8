/*
 * log.c - leveled logging, one write(2) per line.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

int keel__log_level = KEEL_LOG_LEVEL_INFO;

static char component[32] = "keel";
static FILE *log_out;

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};
static const char *const level_tags[] = {"ERROR", "WARN ", "INFO ", "DEBUG", "TRACE"};

#define NLEVELS ((int)(sizeof(level_names) / sizeof(level_names[0])))

void keel_log_init(const char *name, int level, FILE *out)
{
    snprintf(component, sizeof(component), "%s", name);
    keel_log_set_level(level);
    log_out = out;
}

void keel_log_set_level(int level)
{
    if (level < 0)
        level = 0;
    if (level >= NLEVELS)
        level = NLEVELS - 1;
    __atomic_store_n(&keel__log_level, level, __ATOMIC_RELAXED);
}

int keel_log_get_level(void)
{
    return __atomic_load_n(&keel__log_level, __ATOMIC_RELAXED);
}

int keel_log_level_parse(const char *name)
{
    for (int i = 0; i < NLEVELS; i++)
        if (strcasecmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

const char *keel_log_level_name(int level)
{
    if (level < 0 || level >= NLEVELS)
        return "unknown";
    return level_names[level];
}

void keel__log(int level, const char *fmt, ...)
{
    char line[2048];
    struct timeval tv;
    struct tm tm;
    size_t n;
    int saved_errno = errno;
    int fd = log_out ? fileno(log_out) : STDERR_FILENO;
    int r;
    va_list ap;

    if (level < 0 || level >= NLEVELS)
        level = KEEL_LOG_LEVEL_ERROR;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    r = snprintf(line + n, sizeof(line) - n, ".%03dZ %s %s[%d] ", (int)(tv.tv_usec / 1000),
                 level_tags[level], component, (int)getpid());
    if (r > 0)
        n += (size_t)r < sizeof(line) - n ? (size_t)r : sizeof(line) - n - 1;
    va_start(ap, fmt);
    r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);
    if (r > 0)
        n += (size_t)r < sizeof(line) - n ? (size_t)r : sizeof(line) - n - 1;
    line[n++] = '\n';
    /* One write: lines stay whole even when several writers share the file. */
    while (write(fd, line, n) < 0 && errno == EINTR)
        ;
    errno = saved_errno;
}
