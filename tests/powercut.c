/*
 * Power-cut simulation for the SQLite durability tests (tests/test_powercut.py).
 *
 * Loaded with LD_PRELOAD into a `burrow serve` process. For every file under
 * $BURROW_POWERCUT_DIR it keeps, in $BURROW_POWERCUT_SHADOW, a copy of the file as it was
 * when it was last synced: fsync() or fdatasync() on any descriptor of the file copies the
 * file's current contents there (before the real sync runs). A power cut is then
 * simulated from outside: SIGKILL the process and replace every file of the directory
 * with its shadow copy (a file that was never synced is gone). So every write that was
 * not followed by a sync of its file is dropped, whatever SQLite or the kernel did with it.
 *
 * Writes to tracked files and the copies are serialised by one mutex, so a copy holds
 * exactly the writes that returned before the sync was called (a write racing a sync on
 * another thread is either wholly in the copy or not at all). Copies are written to a
 * temporary name and renamed, so a SIGKILL during a copy leaves the previous one.
 * unlink() of a tracked file drops its copy. Directory entries are taken as durable once
 * the file's data was synced (the model is about data, not about directory syncs).
 *
 * Failing syncs: while the file named by $BURROW_POWERCUT_FAIL_SYNC exists, fsync() and
 * fdatasync() of tracked files fail with EIO and neither sync nor copy anything, as a disk
 * that stopped accepting writes would: what was written since the last good sync stays
 * out of the copies. Unset (or the file absent), syncs behave as above.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_FD 65536

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char tracked[MAX_FD];
static char dir[PATH_MAX];
static char shadow[PATH_MAX];
static char fail_flag[PATH_MAX];
static size_t dir_len;
static int ready;

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_close)(int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);

static void init(void) {
    if (ready) return;
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_openat = dlsym(RTLD_NEXT, "openat");
    real_openat64 = dlsym(RTLD_NEXT, "openat64");
    real_close = dlsym(RTLD_NEXT, "close");
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
    real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_unlink = dlsym(RTLD_NEXT, "unlink");
    real_unlinkat = dlsym(RTLD_NEXT, "unlinkat");
    const char *d = getenv("BURROW_POWERCUT_DIR");
    const char *s = getenv("BURROW_POWERCUT_SHADOW");
    if (d && s && strlen(d) + 2 < sizeof dir && strlen(s) + 2 < sizeof shadow) {
        snprintf(dir, sizeof dir, "%s/", d);
        snprintf(shadow, sizeof shadow, "%s", s);
        dir_len = strlen(dir);
    }
    const char *f = getenv("BURROW_POWERCUT_FAIL_SYNC");
    if (f && strlen(f) + 1 < sizeof fail_flag) snprintf(fail_flag, sizeof fail_flag, "%s", f);
    ready = 1;
}

__attribute__((constructor)) static void setup(void) { init(); }

/* Whether path (relative to dirfd) names a file in the tracked directory. */
static int under(int dirfd, const char *path) {
    char full[PATH_MAX];
    if (!dir_len || !path) return 0;
    if (path[0] == '/') {
        snprintf(full, sizeof full, "%s", path);
    } else {
        char base[PATH_MAX];
        if (dirfd == AT_FDCWD) {
            if (!getcwd(base, sizeof base)) return 0;
        } else {
            char link[64];
            snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
            ssize_t n = readlink(link, base, sizeof base - 1);
            if (n < 0) return 0;
            base[n] = 0;
        }
        snprintf(full, sizeof full, "%s/%s", base, path);
    }
    return strncmp(full, dir, dir_len) == 0 && strchr(full + dir_len, '/') == NULL;
}

static void track(int fd, int dirfd, const char *path) {
    if (fd >= 0 && fd < MAX_FD) tracked[fd] = (unsigned char)under(dirfd, path);
}

static int is_tracked(int fd) { return fd >= 0 && fd < MAX_FD && tracked[fd]; }

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Copy the regular file behind fd to shadow/<name> (atomically). Called with lock held. */
static void snapshot(int fd) {
    char link[64], path[PATH_MAX], tmp[PATH_MAX], dest[PATH_MAX];
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink == 0) return;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return;
    path[n] = 0;
    snprintf(dest, sizeof dest, "%s/%s", shadow, base_name(path));
    snprintf(tmp, sizeof tmp, "%s.tmp", dest);
    int in = real_open(path, O_RDONLY | O_CLOEXEC);
    if (in < 0) return;
    int out = real_open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        real_close(in);
        return;
    }
    char buf[1 << 16];
    ssize_t got;
    int ok = 1;
    while ((got = read(in, buf, sizeof buf)) > 0) {
        if (real_write(out, buf, (size_t)got) != got) {
            ok = 0;
            break;
        }
    }
    if (got < 0) ok = 0;
    real_close(in);
    real_close(out);
    if (ok)
        rename(tmp, dest);
    else
        real_unlink(tmp);
}

static void drop_shadow(int dirfd, const char *path) {
    char dest[PATH_MAX];
    if (!under(dirfd, path)) return;
    snprintf(dest, sizeof dest, "%s/%s", shadow, base_name(path));
    real_unlink(dest);
}

#define OPEN_MODE(flags, mode)                                \
    do {                                                      \
        if ((flags) & (O_CREAT | O_TMPFILE)) {                \
            va_list ap;                                       \
            va_start(ap, flags);                              \
            mode = (mode_t)va_arg(ap, int);                   \
            va_end(ap);                                       \
        }                                                     \
    } while (0)

int open(const char *path, int flags, ...) {
    mode_t mode = 0;
    init();
    OPEN_MODE(flags, mode);
    int fd = real_open(path, flags, mode);
    track(fd, AT_FDCWD, path);
    return fd;
}

int open64(const char *path, int flags, ...) {
    mode_t mode = 0;
    init();
    OPEN_MODE(flags, mode);
    int fd = real_open64(path, flags, mode);
    track(fd, AT_FDCWD, path);
    return fd;
}

int openat(int dirfd, const char *path, int flags, ...) {
    mode_t mode = 0;
    init();
    OPEN_MODE(flags, mode);
    int fd = real_openat(dirfd, path, flags, mode);
    track(fd, dirfd, path);
    return fd;
}

int openat64(int dirfd, const char *path, int flags, ...) {
    mode_t mode = 0;
    init();
    OPEN_MODE(flags, mode);
    int fd = real_openat64(dirfd, path, flags, mode);
    track(fd, dirfd, path);
    return fd;
}

int close(int fd) {
    init();
    if (fd >= 0 && fd < MAX_FD) tracked[fd] = 0;
    return real_close(fd);
}

#define SERIALISED(fd, call)                      \
    do {                                          \
        init();                                   \
        if (!is_tracked(fd)) return call;         \
        pthread_mutex_lock(&lock);                \
        __typeof__(call) result_ = call;          \
        int errno_ = errno;                       \
        pthread_mutex_unlock(&lock);              \
        errno = errno_;                           \
        return result_;                           \
    } while (0)

ssize_t write(int fd, const void *buf, size_t count) { SERIALISED(fd, real_write(fd, buf, count)); }

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    SERIALISED(fd, real_pwrite(fd, buf, count, offset));
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    SERIALISED(fd, real_pwrite64(fd, buf, count, offset));
}

int ftruncate(int fd, off_t length) { SERIALISED(fd, real_ftruncate(fd, length)); }

int ftruncate64(int fd, off_t length) { SERIALISED(fd, real_ftruncate64(fd, length)); }

/* Whether syncs are to fail now: the flag file exists. */
static int failing(void) {
    struct stat st;
    return fail_flag[0] && stat(fail_flag, &st) == 0;
}

static int synced(int fd, int (*real)(int)) {
    init();
    if (is_tracked(fd)) {
        if (failing()) {
            errno = EIO;
            return -1;
        }
        pthread_mutex_lock(&lock);
        snapshot(fd);
        pthread_mutex_unlock(&lock);
    }
    return real(fd);
}

int fsync(int fd) { return synced(fd, real_fsync); }

int fdatasync(int fd) { return synced(fd, real_fdatasync); }

int unlink(const char *path) {
    init();
    pthread_mutex_lock(&lock);
    int result = real_unlink(path);
    int errno_ = errno;
    if (result == 0) drop_shadow(AT_FDCWD, path);
    pthread_mutex_unlock(&lock);
    errno = errno_;
    return result;
}

int unlinkat(int dirfd, const char *path, int flags) {
    init();
    pthread_mutex_lock(&lock);
    int result = real_unlinkat(dirfd, path, flags);
    int errno_ = errno;
    if (result == 0) drop_shadow(dirfd, path);
    pthread_mutex_unlock(&lock);
    errno = errno_;
    return result;
}
