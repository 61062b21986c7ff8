/*
 * probe.c - a TCP connection attempt that tells a closed port apart.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "probe.h"

int keel_probe_refused(const char *address, int timeout_ms)
{
    struct sockaddr_in sa;
    char host[64];
    const char *colon = strrchr(address, ':');
    long port;
    int fd, rc, refused = 0, soerr = 0;
    socklen_t len = sizeof(soerr);
    struct pollfd p;

    if (colon == NULL || (size_t)(colon - address) >= sizeof(host))
        return 0;
    memcpy(host, address, (size_t)(colon - address));
    host[colon - address] = '\0';
    port = strtol(colon + 1, NULL, 10);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (port < 1 || port > 65535 || inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return 0;
    if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0)
        return 0;
    rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    if (rc != 0 && errno == ECONNREFUSED) {
        refused = 1;
    } else if (rc != 0 && errno == EINPROGRESS) {
        p.fd = fd;
        p.events = POLLOUT;
        if (poll(&p, 1, timeout_ms) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0)
            refused = soerr == ECONNREFUSED;
    }
    close(fd);
    return refused;
}
