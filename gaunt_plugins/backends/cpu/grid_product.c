/* Fused Gaunt grid product on the CPU: out = ((u @ T1) * (v @ T2)) @ T3, and its backward.
 *
 * u [R, I1], v [R, I2] with row strides su, sv; T1t [P, I1], T2t [P, I2] (to-grid tables,
 * transposed so each grid point's row of coefficients is contiguous), T3t [Io, P] (projection,
 * transposed). Rows are processed in tiles of VW (the SIMD width: 8 floats / 4 doubles with AVX2):
 * a tile is transposed into registers so that every table entry is one broadcast fused
 * multiply-add on a whole vector of rows, whatever the sizes I and P. The tile's grid values
 * ([P] vectors) stay in L1; no [R, P] tensor is written. Short tails are zero-padded.
 * Compiled for float (suffix _f32) and double (suffix _f64).
 */
#include <stddef.h>
#include "simd_apply.h"
#include <string.h>

#define MAXP 2048
#define MAXI 1024

#define DEFINE_GP(T, SUF, VW)                                                                      \
DEFINE_APPLY(T, SUF, VW)                                                                           \
                                                                                                   \
/* X[i] = lanes of rows r..r+n-1 at column i (zero past n) */                                      \
static inline void load_tile_##SUF(const T *x, ptrdiff_t sx, ptrdiff_t n, ptrdiff_t width,         \
                                   vec_##SUF *X) {                                                 \
    for (ptrdiff_t i = 0; i < width; ++i) {                                                        \
        vec_##SUF t = {0};                                                                         \
        for (ptrdiff_t l = 0; l < n; ++l) t[l] = x[l * sx + i];                                    \
        X[i] = t;                                                                                  \
    }                                                                                              \
}                                                                                                  \
static inline void store_tile_##SUF(T *y, ptrdiff_t sy, ptrdiff_t n, ptrdiff_t width,              \
                                    const vec_##SUF *Y) {                                          \
    for (ptrdiff_t i = 0; i < width; ++i)                                                          \
        for (ptrdiff_t l = 0; l < n; ++l) y[l * sy + i] = Y[i][l];                                  \
}                                                                                                  \
int gp_forward_##SUF(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t i1, ptrdiff_t i2, ptrdiff_t p,         \
                     ptrdiff_t io, const T *u, ptrdiff_t su, const T *v, ptrdiff_t sv,             \
                     const T *t1t, const T *t2t, const T *t3t, T *out) {                          \
    if (p > MAXP || i1 > MAXI || i2 > MAXI || io > MAXI) return -1;                                \
    vec_##SUF U[MAXI], V[MAXI], A[MAXP], B[MAXP], O[MAXI];                                         \
    for (ptrdiff_t r = r0; r < r1; r += VW) {                                                      \
        const ptrdiff_t n = (r1 - r < VW) ? (r1 - r) : VW;                                         \
        load_tile_##SUF(u + r * su, su, n, i1, U);                                                 \
        load_tile_##SUF(v + r * sv, sv, n, i2, V);                                                 \
        apply_##SUF(t1t, p, i1, U, A);                                                             \
        apply_##SUF(t2t, p, i2, V, B);                                                             \
        for (ptrdiff_t q = 0; q < p; ++q) A[q] *= B[q];                                            \
        apply_##SUF(t3t, io, p, A, O);                                                             \
        store_tile_##SUF(out + r * io, io, n, io, O);                                              \
    }                                                                                              \
    return 0;                                                                                      \
}                                                                                                  \
                                                                                                   \
/* h = g @ T3^T, du = (h * (v @ T2)) @ T1^T, dv = (h * (u @ T1)) @ T2^T; du or dv may be NULL.      \
 * Tables: t1t [P, I1], t2t [P, I2] (to-grid, as in the forward), t3 [P, Io] (T3 itself),           \
 * t1 [I1, P], t2 [I2, P] (the to-grid tables untransposed, for the projections). */               \
int gp_backward_##SUF(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t i1, ptrdiff_t i2, ptrdiff_t p,        \
                      ptrdiff_t io, const T *u, ptrdiff_t su, const T *v, ptrdiff_t sv,            \
                      const T *g, const T *t1t, const T *t2t, const T *t3, const T *t1,            \
                      const T *t2, T *du, T *dv) {                                                 \
    if (p > MAXP || i1 > MAXI || i2 > MAXI || io > MAXI) return -1;                                \
    vec_##SUF X[MAXI], G[MAXI], H[MAXP], A[MAXP], D[MAXI];                                         \
    for (ptrdiff_t r = r0; r < r1; r += VW) {                                                      \
        const ptrdiff_t n = (r1 - r < VW) ? (r1 - r) : VW;                                         \
        load_tile_##SUF(g + r * io, io, n, io, G);                                                 \
        apply_##SUF(t3, p, io, G, H);                                                              \
        if (du) {                                                                                  \
            load_tile_##SUF(v + r * sv, sv, n, i2, X);                                             \
            apply_##SUF(t2t, p, i2, X, A);                                                         \
            for (ptrdiff_t q = 0; q < p; ++q) A[q] *= H[q];                                        \
            apply_##SUF(t1, i1, p, A, D);                                                          \
            store_tile_##SUF(du + r * i1, i1, n, i1, D);                                           \
        }                                                                                          \
        if (dv) {                                                                                  \
            load_tile_##SUF(u + r * su, su, n, i1, X);                                             \
            apply_##SUF(t1t, p, i1, X, A);                                                         \
            for (ptrdiff_t q = 0; q < p; ++q) A[q] *= H[q];                                        \
            apply_##SUF(t2, i2, p, A, D);                                                          \
            store_tile_##SUF(dv + r * i2, i2, n, i2, D);                                           \
        }                                                                                          \
    }                                                                                              \
    return 0;                                                                                      \
}

DEFINE_GP(float, f32, 8)
DEFINE_GP(double, f64, 4)
