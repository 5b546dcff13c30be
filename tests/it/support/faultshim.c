/* An LD_PRELOAD shim that makes writes and syncs fail (ENOSPC, EIO) at
 * random, for files under one directory only: the storage fault test
 * (tests/it/faults.rs) runs the real daemon with it.
 *
 * Environment (read once, at load):
 *   HOOKGATE_FAULT_DIR     only files whose path starts with this fail
 *   HOOKGATE_FAULT_SEED    seed of the random choices
 *   HOOKGATE_FAULT_SWITCH  a file: while it is absent nothing fails; it
 *                          holds rules, re-read at each call (see `rate`)
 *   HOOKGATE_FAULT_LOG     a file each injected fault is appended to, one
 *                          line: "UNIX_TIME write|sync ERRNO partial|whole PATH"
 *
 * A failed write either writes nothing or (half the time) writes a random
 * prefix, returns its length and fails the next write to that descriptor,
 * as a filling disk does. Wrapped: write, pwrite(64), writev, pwritev(64),
 * fsync, fdatasync, sync_file_range; the real calls come from
 * dlsym(RTLD_NEXT). Rust's std and sled call these libc symbols. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);
typedef int (*sync_fn)(int);
typedef int (*range_fn)(int, off64_t, off64_t, unsigned int);

static write_fn real_write;
static pwrite_fn real_pwrite, real_pwrite64;
static writev_fn real_writev;
static pwritev_fn real_pwritev, real_pwritev64;
static sync_fn real_fsync, real_fdatasync;
static range_fn real_sync_file_range;

static char dir[4096];
static size_t dir_len;
static char switch_path[4096];
static int log_fd = -1;
static uint64_t seed;
static uint64_t counter;

/* Descriptors whose next write fails: a partial write came before. */
#define MAX_FD 65536
static unsigned char doomed[MAX_FD];

__attribute__((constructor)) static void init(void) {
    real_write = (write_fn)dlsym(RTLD_NEXT, "write");
    real_pwrite = (pwrite_fn)dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = (pwrite_fn)dlsym(RTLD_NEXT, "pwrite64");
    real_writev = (writev_fn)dlsym(RTLD_NEXT, "writev");
    real_pwritev = (pwritev_fn)dlsym(RTLD_NEXT, "pwritev");
    real_pwritev64 = (pwritev_fn)dlsym(RTLD_NEXT, "pwritev64");
    real_fsync = (sync_fn)dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (sync_fn)dlsym(RTLD_NEXT, "fdatasync");
    real_sync_file_range = (range_fn)dlsym(RTLD_NEXT, "sync_file_range");
    const char *d = getenv("HOOKGATE_FAULT_DIR");
    const char *s = getenv("HOOKGATE_FAULT_SWITCH");
    const char *l = getenv("HOOKGATE_FAULT_LOG");
    const char *n = getenv("HOOKGATE_FAULT_SEED");
    if (d && s && strlen(d) < sizeof dir && strlen(s) < sizeof switch_path) {
        strcpy(dir, d);
        dir_len = strlen(dir);
        strcpy(switch_path, s);
    }
    if (l)
        log_fd = open(l, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    seed = n ? strtoull(n, NULL, 10) : 0;
}

/* A call that comes before `init` (another library's constructor) finds
 * its real function here. */
#define REAL(f, type)                                                          \
    do {                                                                       \
        if (!real_##f)                                                         \
            real_##f = (type)dlsym(RTLD_NEXT, #f);                             \
    } while (0)

static uint64_t next_random(void) {
    uint64_t z = seed + __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED) *
                            0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A uniform draw in [0, 1). */
static double draw(void) { return (double)(next_random() >> 11) / 9007199254740992.0; }

enum op { WRITE, SYNC };

/* Whether `fd` is a file under `dir`; its path into `path`. */
static int watched(int fd, char *path, size_t size) {
    if (dir_len == 0 || fd < 0)
        return 0;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, size - 1);
    if (n <= 0)
        return 0;
    path[n] = 0;
    return (size_t)n > dir_len && strncmp(path, dir, dir_len) == 0 && path[dir_len] == '/';
}

/* The rate for `op` on `path` while the switch file exists; 0 otherwise.
 * The file holds rules, one a line, "SUBSTRING write|sync|any RATE": the
 * first whose substring is in the path and whose op matches applies. */
static double rate(enum op op, const char *path) {
    int fd = open(switch_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char sub[1024], which[16];
        double r;
        if (sscanf(line, "%1023s %15s %lf", sub, which, &r) != 3)
            continue;
        int match_op = strcmp(which, "any") == 0 ||
                       strcmp(which, op == SYNC ? "sync" : "write") == 0;
        if (match_op && strstr(path, sub))
            return r;
    }
    return 0;
}

static void note(enum op op, int err, int partial, const char *path) {
    if (log_fd < 0)
        return;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    char line[4400];
    int n = snprintf(line, sizeof line, "%lld.%09ld %s %s %s %s\n", (long long)now.tv_sec,
                     now.tv_nsec, op == SYNC ? "sync" : "write",
                     err == ENOSPC ? "ENOSPC" : "EIO", partial ? "partial" : "whole", path);
    if (n > 0)
        real_write(log_fd, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* What a write to `fd` of `len` bytes does: 0 go ahead, -1 fail (errno
 * set), or a length to write instead (a prefix, then the next one fails). */
static ssize_t decide_write(int fd, size_t len) {
    char path[4096];
    if (!watched(fd, path, sizeof path))
        return 0;
    int err = next_random() & 1 ? ENOSPC : EIO;
    if (fd < MAX_FD && __atomic_exchange_n(&doomed[fd], 0, __ATOMIC_RELAXED)) {
        note(WRITE, err, 0, path);
        errno = err;
        return -1;
    }
    if (len == 0 || draw() >= rate(WRITE, path))
        return 0;
    if (len > 1 && fd < MAX_FD && next_random() & 1) {
        note(WRITE, err, 1, path);
        __atomic_store_n(&doomed[fd], 1, __ATOMIC_RELAXED);
        return (ssize_t)(1 + next_random() % (len - 1));
    }
    note(WRITE, err, 0, path);
    errno = err;
    return -1;
}

static int decide_sync(int fd) {
    char path[4096];
    if (!watched(fd, path, sizeof path) || draw() >= rate(SYNC, path))
        return 0;
    int err = next_random() & 1 ? ENOSPC : EIO;
    note(SYNC, err, 0, path);
    errno = err;
    return -1;
}

ssize_t write(int fd, const void *buf, size_t len) {
    REAL(write, write_fn);
    ssize_t d = decide_write(fd, len);
    if (d < 0)
        return -1;
    return real_write(fd, buf, d > 0 ? (size_t)d : len);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off) {
    REAL(pwrite, pwrite_fn);
    ssize_t d = decide_write(fd, len);
    if (d < 0)
        return -1;
    return real_pwrite(fd, buf, d > 0 ? (size_t)d : len, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) {
    REAL(pwrite64, pwrite_fn);
    ssize_t d = decide_write(fd, len);
    if (d < 0)
        return -1;
    return real_pwrite64(fd, buf, d > 0 ? (size_t)d : len, off);
}

static size_t total(const struct iovec *iov, int n) {
    size_t t = 0;
    for (int i = 0; i < n; i++)
        t += iov[i].iov_len;
    return t;
}

/* A vectored write cut to its first buffer (or part of it). */
static int cut(const struct iovec *iov, int n, ssize_t d, struct iovec *one) {
    if (n == 0 || d == 0)
        return n;
    *one = iov[0];
    if ((size_t)d < one->iov_len)
        one->iov_len = (size_t)d;
    return 1;
}

ssize_t writev(int fd, const struct iovec *iov, int n) {
    REAL(writev, writev_fn);
    ssize_t d = decide_write(fd, total(iov, n));
    if (d < 0)
        return -1;
    struct iovec one;
    int m = cut(iov, n, d, &one);
    return real_writev(fd, d > 0 ? &one : iov, m);
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off) {
    REAL(pwritev, pwritev_fn);
    ssize_t d = decide_write(fd, total(iov, n));
    if (d < 0)
        return -1;
    struct iovec one;
    int m = cut(iov, n, d, &one);
    return real_pwritev(fd, d > 0 ? &one : iov, m, off);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int n, off_t off) {
    REAL(pwritev64, pwritev_fn);
    ssize_t d = decide_write(fd, total(iov, n));
    if (d < 0)
        return -1;
    struct iovec one;
    int m = cut(iov, n, d, &one);
    return real_pwritev64(fd, d > 0 ? &one : iov, m, off);
}

int fsync(int fd) {
    REAL(fsync, sync_fn);
    return decide_sync(fd) ? -1 : real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync, sync_fn);
    return decide_sync(fd) ? -1 : real_fdatasync(fd);
}

int sync_file_range(int fd, off64_t off, off64_t len, unsigned int flags) {
    REAL(sync_file_range, range_fn);
    return decide_sync(fd) ? -1 : real_sync_file_range(fd, off, len, flags);
}
