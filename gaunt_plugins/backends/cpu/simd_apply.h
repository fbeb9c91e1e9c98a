/* Shared by the CPU kernels: a table applied to a tile of VW rows held in SIMD vectors.
 *
 * DEFINE_APPLY(T, SUF, VW) defines the vector type vec_SUF (VW lanes of T) and
 *   apply_SUF(tab, nq, width, X, Y):  Y[q] = sum_i tab[q * width + i] * X[i]   (tab [nq, width], row-major)
 * Four outputs at a time, so four independent FMA chains hide the FMA latency; every table entry is
 * one broadcast multiply-add on a whole vector of rows, whatever the sizes.
 */
#ifndef GAUNT_SIMD_APPLY_H
#define GAUNT_SIMD_APPLY_H
#include <stddef.h>

#define DEFINE_APPLY(T, SUF, VW)                                                                   \
typedef T vec_##SUF __attribute__((vector_size(sizeof(T) * VW)));                                  \
static inline void apply_##SUF(const T *restrict tab, ptrdiff_t nq, ptrdiff_t width,               \
                               const vec_##SUF *restrict X, vec_##SUF *restrict Y) {               \
    ptrdiff_t q = 0;                                                                               \
    for (; q + 4 <= nq; q += 4) {                                                                  \
        const T *restrict r0 = tab + q * width, *restrict r1 = r0 + width;                         \
        const T *restrict r2 = r1 + width, *restrict r3 = r2 + width;                              \
        vec_##SUF a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                          \
        for (ptrdiff_t i = 0; i < width; ++i) {                                                    \
            const vec_##SUF x = X[i];                                                              \
            a0 += r0[i] * x; a1 += r1[i] * x; a2 += r2[i] * x; a3 += r3[i] * x;                    \
        }                                                                                          \
        Y[q] = a0; Y[q + 1] = a1; Y[q + 2] = a2; Y[q + 3] = a3;                                    \
    }                                                                                              \
    for (; q < nq; ++q) {                                                                          \
        const T *restrict row = tab + q * width;                                                   \
        vec_##SUF acc = {0};                                                                       \
        for (ptrdiff_t i = 0; i < width; ++i) acc += row[i] * X[i];                                \
        Y[q] = acc;                                                                                \
    }                                                                                              \
}
#endif
