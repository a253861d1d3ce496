/* Guarded, locked allocation and the free-region cache: the one place that
 * holds allocator state (see securemem.h, and pyglue.h for the boundary). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "securemem.h"
#include "primitives.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#if !defined(SYS_memfd_secret) && defined(__linux__) && \
    (defined(__x86_64__) || defined(__aarch64__) || defined(__riscv) || defined(__s390x__))
#define SYS_memfd_secret 447
#endif

#ifdef NOMYO_SANITIZE_BUILD
/* ASan/UBSan runtimes make mlock/munlock no-ops; the sanitizer build calls
 * the kernel directly so it locks (and is tested) like the normal one */
static int lock_range(const void *p, size_t n)
{
    return (int)syscall(SYS_mlock, p, n);
}

static int unlock_range(const void *p, size_t n)
{
    return (int)syscall(SYS_munlock, p, n);
}
#else
#define lock_range(p, n) mlock((p), (n))
#define unlock_range(p, n) munlock((p), (n))
#endif

const int NOMYO_HAVE_GETRANDOM =
#if defined(NOMYO_HAVE_GETRANDOM_FN) || defined(SYS_getrandom)
    1;
#else
    0;
#endif
const int NOMYO_HAVE_EXPLICIT_BZERO =
#ifdef NOMYO_HAVE_EXPLICIT_BZERO_FN
    1;
#else
    0;
#endif
const int NOMYO_HAVE_MADV_DONTDUMP =
#ifdef MADV_DONTDUMP
    1;
#else
    0;
#endif
const int NOMYO_HAVE_MADV_WIPEONFORK =
#ifdef MADV_WIPEONFORK
    1;
#else
    0;
#endif
const int NOMYO_HAVE_MEMFD_SECRET =
#ifdef SYS_memfd_secret
    1;
#else
    0;
#endif

static size_t page_size;
static unsigned char canary[NOMYO_CANARY_BYTES];
static volatile unsigned generation = 1;
static int secret_usable = -1; /* -1 unknown, 0 no, 1 yes */
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_result = -1;
static int init_errno;

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static nomyo_region *cache[NOMYO_CACHE_SLOTS];
static size_t cache_count;
static size_t cache_pages;

#ifdef NOMYO_TEST_HOOKS
/* the debug capture (test builds only): frees run without the GIL, from
 * any thread, so every access goes through debug_lock */
static pthread_mutex_t debug_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char *debug_dst;
static size_t debug_cap;
static size_t debug_len;
static int debug_before;
#endif

/* fork() from one thread while another is inside cache_take or cache_give
 * once left the child a half-updated cache (a slot counted but not yet
 * written, or an entry listed twice), and its handler below then unmapped
 * and freed a stale pointer: a child crashed in about 2 of 1000 forks under
 * load.  So the forking thread takes every lock first; the child inherits
 * them held, with the cache whole, and the parent lets go.  The locks are
 * never held across a call that could wait on another lock. */
static void lock_before_fork(void)
{
#ifdef NOMYO_TEST_HOOKS
    pthread_mutex_lock(&debug_lock);
#endif
    pthread_mutex_lock(&cache_lock);
}

static void unlock_in_parent(void)
{
    pthread_mutex_unlock(&cache_lock);
#ifdef NOMYO_TEST_HOOKS
    pthread_mutex_unlock(&debug_lock);
#endif
}

static void forget_cache_in_child(void)
{
    /* the child keeps copies of the cached mappings: zeroed by WIPEONFORK,
     * and no longer locked (mlock is not inherited), so never reuse them.
     * Its only thread holds the locks (lock_before_fork): made anew. */
    size_t i;
    generation++;
    pthread_mutex_init(&cache_lock, NULL);
    for (i = 0; i < cache_count; i++) {
        munmap(cache[i]->base, cache[i]->total);
        free(cache[i]);
        cache[i] = NULL;
    }
    cache_count = 0;
    cache_pages = 0;
#ifdef NOMYO_TEST_HOOKS
    pthread_mutex_init(&debug_lock, NULL);
#endif
}

static void do_init(void)
{
    long ps = sysconf(_SC_PAGESIZE);
    if (ps <= 0 || (ps & (ps - 1)) != 0) {
        init_errno = EINVAL;
        return;
    }
    page_size = (size_t)ps;
    if (nomyo_random(canary, sizeof canary) != 0) {
        init_errno = errno;
        return;
    }
    if (pthread_atfork(lock_before_fork, unlock_in_parent, forget_cache_in_child) != 0) {
        init_errno = ENOMEM;
        return;
    }
    init_result = 0;
}

int nomyo_init(void)
{
    pthread_once(&init_once, do_init);
    if (init_result != 0)
        errno = init_errno;
    return init_result;
}

size_t nomyo_page_size(void)
{
    return nomyo_init() == 0 ? page_size : 0;
}

static size_t round_up(size_t n)
{
    return (n + page_size - 1) & ~(page_size - 1);
}

static int open_secret_fd(void)
{
#ifdef SYS_memfd_secret
    return (int)syscall(SYS_memfd_secret, (unsigned)O_CLOEXEC);
#else
    errno = ENOSYS;
    return -1;
#endif
}

int nomyo_memfd_secret_usable(void)
{
    if (secret_usable < 0) {
        int fd = open_secret_fd();
        secret_usable = fd >= 0;
        if (fd >= 0)
            close(fd);
    }
    return secret_usable;
}

/* place the user data flush against the trailing guard, canary in front */
static void place(nomyo_region *r, size_t size)
{
    size_t data_pages = r->total - 2 * page_size;
    unsigned char *data_start = r->base + page_size;
    r->size = size;
    r->data = data_start + data_pages - size;
    memcpy(r->data - NOMYO_CANARY_BYTES, canary, NOMYO_CANARY_BYTES);
    memset(r->data, NOMYO_GARBAGE_BYTE, size);
}

static nomyo_region *cache_take(size_t total)
{
    nomyo_region *r = NULL;
    size_t i;
    pthread_mutex_lock(&cache_lock);
    for (i = 0; i < cache_count; i++) {
        if (cache[i]->total == total && cache[i]->generation == generation) {
            r = cache[i];
            cache[i] = cache[--cache_count];
            cache[cache_count] = NULL;
            cache_pages -= total / page_size - 2;
            break;
        }
    }
    pthread_mutex_unlock(&cache_lock);
    return r;
}

/* keep a zeroed, still locked region for reuse; 0 when it was not taken */
static int cache_give(nomyo_region *r)
{
    size_t pages = r->total / page_size - 2;
    int taken = 0;
    pthread_mutex_lock(&cache_lock);
    if (cache_count < NOMYO_CACHE_SLOTS && cache_pages + pages <= NOMYO_CACHE_MAX_PAGES &&
        r->generation == generation) {
        cache[cache_count++] = r;
        cache_pages += pages;
        taken = 1;
    }
    pthread_mutex_unlock(&cache_lock);
    return taken;
}

static void unmap_region(nomyo_region *r)
{
    if (!nomyo_forked(r)) {
        if (!(r->flags & NOMYO_F_SECRET))
            unlock_range(r->base + page_size, r->total - 2 * page_size);
    }
    munmap(r->base, r->total);
    free(r);
}

size_t nomyo_cache_trim(void)
{
    nomyo_region *taken[NOMYO_CACHE_SLOTS];
    size_t n, i, pages;
    pthread_mutex_lock(&cache_lock);
    n = cache_count;
    pages = cache_pages;
    memcpy(taken, cache, n * sizeof cache[0]);
    memset(cache, 0, sizeof cache);
    cache_count = 0;
    cache_pages = 0;
    pthread_mutex_unlock(&cache_lock);
    for (i = 0; i < n; i++)
        unmap_region(taken[i]);
    return pages;
}

size_t nomyo_cache_pages(void)
{
    size_t pages;
    pthread_mutex_lock(&cache_lock);
    pages = cache_pages;
    pthread_mutex_unlock(&cache_lock);
    return pages;
}

static int lock_pages(nomyo_region *r, unsigned char *p, size_t n)
{
    if (lock_range(p, n) == 0)
        return 0;
    if (errno == ENOMEM || errno == EPERM || errno == EAGAIN) {
        /* the cache holds locked pages: give them back and try once more */
        if (nomyo_cache_trim() > 0 && lock_range(p, n) == 0)
            return 0;
    }
    r->lock_errno = errno;
    return -1;
}

static int map_secret(unsigned char *at, size_t n)
{
    int fd = open_secret_fd(), saved;
    void *p;
    if (fd < 0)
        return -1;
    if (ftruncate(fd, (off_t)n) != 0) {
        saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    p = mmap(at, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
    saved = errno;
    close(fd);
    if (p == MAP_FAILED) {
        errno = saved;
        return -1;
    }
    return 0;
}

nomyo_region *nomyo_alloc(size_t size, int flags)
{
    nomyo_region *r;
    size_t data_pages, total;
    unsigned char *data_start;
    void *base;

    if (nomyo_init() != 0)
        return NULL;
    if (size > SIZE_MAX - 3 * page_size - NOMYO_CANARY_BYTES) {
        errno = ENOMEM;
        return NULL;
    }
    data_pages = round_up(size + NOMYO_CANARY_BYTES);
    total = data_pages + 2 * page_size;

    if (!(flags & (NOMYO_F_SECRET | NOMYO_F_NOCACHE))) {
        r = cache_take(total);
        if (r != NULL) {
            r->lock_errno = 0;
            place(r, size);
            return r;
        }
    }

    r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    /* reserve the whole range inaccessible, then open up the data pages
     * (making them writable is what charges them to the commit limit) */
    base = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        free(r);
        return NULL;
    }
    r->base = base;
    r->total = total;
    r->flags = flags;
    r->generation = generation;
    data_start = r->base + page_size;

    if (flags & NOMYO_F_SECRET) {
        if (map_secret(data_start, data_pages) != 0) {
            int saved = errno;
            munmap(base, total);
            free(r);
            errno = saved;
            return NULL;
        }
        /* secretmem pages are locked by the kernel (VM_LOCKED) */
        r->status |= NOMYO_S_SECRET | NOMYO_S_LOCKED;
#ifdef MADV_DONTFORK
        if (madvise(data_start, data_pages, MADV_DONTFORK) == 0)
            r->status |= NOMYO_S_DONTFORK;
#endif
    } else {
        if (mprotect(data_start, data_pages, PROT_READ | PROT_WRITE) != 0) {
            int saved = errno;
            munmap(base, total);
            free(r);
            errno = saved;
            return NULL;
        }
        if (lock_pages(r, data_start, data_pages) == 0)
            r->status |= NOMYO_S_LOCKED;
#ifdef MADV_WIPEONFORK
        if (madvise(data_start, data_pages, MADV_WIPEONFORK) == 0)
            r->status |= NOMYO_S_WIPEONFORK;
#endif
    }
    r->status |= NOMYO_S_GUARDED;
#ifdef MADV_DONTDUMP
    if (madvise(base, total, MADV_DONTDUMP) == 0)
        r->status |= NOMYO_S_DONTDUMP;
#endif
    place(r, size);
    return r;
}

int nomyo_forked(const nomyo_region *r)
{
    return r->generation != generation;
}

static void corrupted(const nomyo_region *r)
{
    char msg[160];
    int n = snprintf(msg, sizeof msg,
                     "nomyo: secure buffer canary overwritten at %p (size %zu): "
                     "memory corruption detected, aborting\n",
                     (void *)r->data, r->size);
    if (n > 0)
        (void)!write(STDERR_FILENO, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    abort();
}

static int canary_intact(const nomyo_region *r)
{
    const volatile unsigned char *c = r->data - NOMYO_CANARY_BYTES;
    unsigned char diff = 0;
    size_t i;
    for (i = 0; i < NOMYO_CANARY_BYTES; i++)
        diff |= c[i] ^ canary[i];
    return diff == 0;
}

#ifdef NOMYO_TEST_HOOKS
static void capture(const nomyo_region *r, int before_zero)
{
    /* appends: every free while the hook is on, until the scratch area is full */
    size_t n = r->total - 2 * page_size;
    pthread_mutex_lock(&debug_lock);
    if (debug_dst != NULL && debug_before == before_zero) {
        if (n > debug_cap - debug_len)
            n = debug_cap - debug_len;
        memcpy(debug_dst + debug_len, r->base + page_size, n);
        debug_len += n;
    }
    pthread_mutex_unlock(&debug_lock);
}
#else
#define capture(r, before_zero) ((void)0)
#endif

void nomyo_free(nomyo_region *r)
{
    unsigned char *data_start;
    size_t data_pages;
    if (r == NULL)
        return;
    data_start = r->base + page_size;
    data_pages = r->total - 2 * page_size;
    if (nomyo_forked(r)) {
        /* a child's copy: wiped by WIPEONFORK, or not mapped at all
         * (DONTFORK); the canary is gone with it, so just let go */
        if (!(r->flags & NOMYO_F_SECRET))
            nomyo_zero(data_start, data_pages);
        unmap_region(r);
        return;
    }
    if (!canary_intact(r))
        corrupted(r);
    capture(r, 1);
    nomyo_zero(data_start, data_pages);
    capture(r, 0);
    if (!(r->flags & (NOMYO_F_SECRET | NOMYO_F_NOCACHE)) && (r->status & NOMYO_S_LOCKED) &&
        cache_give(r))
        return;
    unmap_region(r);
}

#ifdef NOMYO_TEST_HOOKS
void nomyo_debug_capture(unsigned char *dst, size_t cap, int before_zero)
{
    pthread_mutex_lock(&debug_lock);
    debug_dst = dst;
    debug_cap = dst != NULL ? cap : 0;
    debug_before = before_zero;
    debug_len = 0;
    pthread_mutex_unlock(&debug_lock);
}

size_t nomyo_debug_captured(void)
{
    size_t n;
    pthread_mutex_lock(&debug_lock);
    n = debug_len;
    pthread_mutex_unlock(&debug_lock);
    return n;
}
#endif
