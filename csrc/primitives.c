/* Zeroing, random fill, register and stack scrubbing.  See primitives.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "primitives.h"

#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef NOMYO_HAVE_GETRANDOM_FN
#include <sys/random.h>
#endif

void nomyo_zero(void *p, size_t n)
{
    if (n == 0)
        return;
#ifdef NOMYO_HAVE_EXPLICIT_BZERO_FN
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
#ifdef NOMYO_HAVE_GETRANDOM_FN
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

