/* Guarded, locked allocation, zeroing and random fill.  See securemem.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "securemem.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 25))
#include <sys/random.h>
#define HAVE_GETRANDOM_FN 1
#define HAVE_EXPLICIT_BZERO_FN 1
#endif

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
#if defined(HAVE_GETRANDOM_FN) || defined(SYS_getrandom)
    1;
#else
    0;
#endif
const int NOMYO_HAVE_EXPLICIT_BZERO =
#ifdef HAVE_EXPLICIT_BZERO_FN
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

static unsigned char *debug_dst;
static size_t debug_cap;
static size_t debug_len;
static int debug_before;

void nomyo_zero(void *p, size_t n)
{
    if (n == 0)
        return;
#ifdef HAVE_EXPLICIT_BZERO_FN
    explicit_bzero(p, n);
#else
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
#endif
}

/* Vector registers: memcpy and friends move data through them, and whatever
 * they hold is written to the stack whenever something saves them (the
 * dynamic linker's lazy binding, XSAVE in a signal frame).  glibc's AVX-512
 * (EVEX) routines use ymm16-31, which vzeroall does not touch. */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx"), noinline)) static void clear_avx(void)
{
    __asm__ __volatile__("vzeroall" ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",
                         "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
                         "xmm15", "memory");
}

__attribute__((target("avx512f"), noinline)) static void clear_avx512_upper(void)
{
    __asm__ __volatile__(
        "vpxord %%zmm16, %%zmm16, %%zmm16\n\tvpxord %%zmm17, %%zmm17, %%zmm17\n\t"
        "vpxord %%zmm18, %%zmm18, %%zmm18\n\tvpxord %%zmm19, %%zmm19, %%zmm19\n\t"
        "vpxord %%zmm20, %%zmm20, %%zmm20\n\tvpxord %%zmm21, %%zmm21, %%zmm21\n\t"
        "vpxord %%zmm22, %%zmm22, %%zmm22\n\tvpxord %%zmm23, %%zmm23, %%zmm23\n\t"
        "vpxord %%zmm24, %%zmm24, %%zmm24\n\tvpxord %%zmm25, %%zmm25, %%zmm25\n\t"
        "vpxord %%zmm26, %%zmm26, %%zmm26\n\tvpxord %%zmm27, %%zmm27, %%zmm27\n\t"
        "vpxord %%zmm28, %%zmm28, %%zmm28\n\tvpxord %%zmm29, %%zmm29, %%zmm29\n\t"
        "vpxord %%zmm30, %%zmm30, %%zmm30\n\tvpxord %%zmm31, %%zmm31, %%zmm31"
        ::: "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24",
        "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "memory");
}

__attribute__((noinline)) static void clear_sse(void)
{
    __asm__ __volatile__(
        "pxor %%xmm0, %%xmm0\n\tpxor %%xmm1, %%xmm1\n\tpxor %%xmm2, %%xmm2\n\t"
        "pxor %%xmm3, %%xmm3\n\tpxor %%xmm4, %%xmm4\n\tpxor %%xmm5, %%xmm5\n\t"
        "pxor %%xmm6, %%xmm6\n\tpxor %%xmm7, %%xmm7\n\tpxor %%xmm8, %%xmm8\n\t"
        "pxor %%xmm9, %%xmm9\n\tpxor %%xmm10, %%xmm10\n\tpxor %%xmm11, %%xmm11\n\t"
        "pxor %%xmm12, %%xmm12\n\tpxor %%xmm13, %%xmm13\n\tpxor %%xmm14, %%xmm14\n\t"
        "pxor %%xmm15, %%xmm15"
        ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
        "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory");
}
#endif

void nomyo_clear_vector_registers(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx512f"))
        clear_avx512_upper();
    if (__builtin_cpu_supports("avx"))
        clear_avx();
    else
        clear_sse();
#endif
}

/* Zero the vector registers, then NOMYO_SCRUB_BYTES of this thread's stack
 * below the caller's frame, where the frames of a call just returned
 * (OpenSSL's AES-GCM, RSA, a memcpy's register spill) may have left blocks
 * of plaintext or key material. */
__attribute__((noinline)) void nomyo_scrub_stack(void)
{
    unsigned char area[NOMYO_SCRUB_BYTES];
    nomyo_clear_vector_registers();
    nomyo_zero(area, sizeof area);
    __asm__ __volatile__("" : : "r"(area) : "memory");
}

int nomyo_random(void *p, size_t n)
{
    unsigned char *out = p;
    while (n > 0) {
        size_t chunk = n > 33554431 ? 33554431 : n;
        ssize_t got;
#ifdef HAVE_GETRANDOM_FN
        got = getrandom(out, chunk, 0);
#elif defined(SYS_getrandom)
        got = syscall(SYS_getrandom, out, chunk, 0);
#else
        errno = ENOSYS;
        got = -1;
#endif
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        out += got;
        n -= (size_t)got;
    }
    return 0;
}

static void forget_cache_in_child(void)
{
    /* the child keeps copies of the cached mappings: zeroed by WIPEONFORK,
     * and no longer locked (mlock is not inherited), so never reuse them */
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
    if (pthread_atfork(NULL, NULL, forget_cache_in_child) != 0) {
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

static void capture(const nomyo_region *r)
{
    /* appends: every free while the hook is on, until the scratch area is full */
    size_t n = r->total - 2 * page_size;
    if (n > debug_cap - debug_len)
        n = debug_cap - debug_len;
    memcpy(debug_dst + debug_len, r->base + page_size, n);
    debug_len += n;
}

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
    if (debug_dst != NULL && debug_before)
        capture(r);
    nomyo_zero(data_start, data_pages);
    if (debug_dst != NULL && !debug_before)
        capture(r);
    if (!(r->flags & (NOMYO_F_SECRET | NOMYO_F_NOCACHE)) && (r->status & NOMYO_S_LOCKED) &&
        cache_give(r))
        return;
    unmap_region(r);
}

void nomyo_debug_capture(unsigned char *dst, size_t cap, int before_zero)
{
    debug_dst = dst;
    debug_cap = dst != NULL ? cap : 0;
    debug_before = before_zero;
    debug_len = 0;
}

size_t nomyo_debug_captured(void)
{
    return debug_len;
}
