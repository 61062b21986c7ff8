/*
 * log.h - leveled logging to stderr (or a file).
 *
 * One line per call:
 *   2026-11-25T16:45:59.123Z INFO  keel-server[1234] listening on 127.0.0.1:7000
 * time in UTC with milliseconds, level, component and pid, then the message.
 * Each line is written with a single write(2), so lines from several threads
 * or processes sharing a file never interleave.
 *
 * KEEL_LOG_* macros test the level before anything else: the arguments of a
 * call below the current level are not evaluated.  The level may be changed at
 * any time (it is a relaxed atomic); the component and the output are set once
 * at start-up by keel_log_init() before threads start.
 */
#ifndef KEEL_LOG_H
#define KEEL_LOG_H

#include <stdarg.h>
#include <stdio.h>

enum keel_log_level {
    KEEL_LOG_LEVEL_ERROR = 0,
    KEEL_LOG_LEVEL_WARN = 1,
    KEEL_LOG_LEVEL_INFO = 2,
    KEEL_LOG_LEVEL_DEBUG = 3,
    KEEL_LOG_LEVEL_TRACE = 4,
};

extern int keel__log_level;

/*
 * Set the component name printed on each line (copied, at most 31 bytes) and
 * the level.  `out` is where lines go: NULL means stderr.  The caller keeps
 * `out` open for the program's life.
 */
void keel_log_init(const char *component, int level, FILE *out);

void keel_log_set_level(int level);
int keel_log_get_level(void);

/* "error", "warn", "info", "debug", "trace" -> level, or -1 when unknown. */
int keel_log_level_parse(const char *name);
const char *keel_log_level_name(int level);

/* Emit a line unconditionally; use the macros, which check the level first. */
void keel__log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define KEEL_LOG(level, ...)                                                                       \
    do {                                                                                           \
        if ((level) <= __atomic_load_n(&keel__log_level, __ATOMIC_RELAXED))                        \
            keel__log((level), __VA_ARGS__);                                                       \
    } while (0)

#define KEEL_LOG_ERROR(...) KEEL_LOG(KEEL_LOG_LEVEL_ERROR, __VA_ARGS__)
#define KEEL_LOG_WARN(...)  KEEL_LOG(KEEL_LOG_LEVEL_WARN, __VA_ARGS__)
#define KEEL_LOG_INFO(...)  KEEL_LOG(KEEL_LOG_LEVEL_INFO, __VA_ARGS__)
#define KEEL_LOG_DEBUG(...) KEEL_LOG(KEEL_LOG_LEVEL_DEBUG, __VA_ARGS__)
#define KEEL_LOG_TRACE(...) KEEL_LOG(KEEL_LOG_LEVEL_TRACE, __VA_ARGS__)

#endif
