/* Fused Gaunt convolution on the CPU (MACE's conv_tp), forward and first-order backward.
 *
 * Per edge e and channel c (tiles of VW channels of one edge; callers split the edges over threads):
 *   U[i] = x[e, idx1[c, i]] * w[e, deg1[i], c]             node features (flat e3nn mul_ir) x input weight
 *   V[j] = sh[e, j] * w[e, K1 + deg2[j], c]               edge harmonics x harmonic weight
 *   Q[k] = sum_p T3[p, k] (T1^T U)[p] (T2^T V)[p]          the Gaunt product on the grid
 *   out[e, idxo[c, k]] = w[e, K1 + K2 + deg3[k], c] * Q[k]
 * x [E, D1] and out [E, Do] are flat rows; w [E, K1+K2+K3, C] is degree-major; idx1 [C, I1] holds
 * offsets into a row of x (-1: coefficient absent, zero), idxo [C, Io] offsets into a row of out
 * (-1: not emitted). Tables: t1t [P, I1], t2t [P, I2], t3t [Io, P]; the backward also reads
 * t1 [I1, P], t2 [I2, P], t3 [P, Io]. The backward adds into dx [E, D1] (zeroed by the caller; lanes
 * whose idx1 offsets coincide, as for several products of one channel, accumulate) and writes
 * dsh [E, I2] (summed over channels) and dw [E, K1+K2+K3, C].
 */
#include <stddef.h>
#include "simd_apply.h"
#include <string.h>

#define MAXP 1024
#define MAXI 512
#define MAXK2 16

#define DEFINE_CONV(T, SUF, VW)                                                                    \
DEFINE_APPLY(T, SUF, VW)                                                                           \
static inline vec_##SUF cload_##SUF(const T *row, ptrdiff_t n) {                                  \
    vec_##SUF t = {0};                                                                            \
    if (n == VW) { memcpy(&t, row, sizeof(t)); return t; }                                         \
    for (ptrdiff_t l = 0; l < n; ++l) t[l] = row[l];                                               \
    return t;                                                                                      \
}                                                                                                  \
static inline void cstore_##SUF(T *row, ptrdiff_t n, vec_##SUF v) {                               \
    if (n == VW) { memcpy(row, &v, sizeof(v)); return; }                                           \
    for (ptrdiff_t l = 0; l < n; ++l) row[l] = v[l];                                               \
}                                                                                                  \
/* gather lanes c0..c0+n-1 of coefficient i through the offset table (zero where absent) */        \
static inline vec_##SUF cgather_##SUF(const T *row, const long *idx, ptrdiff_t stride,            \
                                       ptrdiff_t n) {                                              \
    vec_##SUF t = {0};                                                                            \
    for (ptrdiff_t l = 0; l < n; ++l) {                                                            \
        const long o = idx[l * stride];                                                            \
        t[l] = o < 0 ? (T)0 : row[o];                                                              \
    }                                                                                              \
    return t;                                                                                      \
}                                                                                                  \
static inline void cscatter_##SUF(T *row, const long *idx, ptrdiff_t stride, ptrdiff_t n,         \
                                  vec_##SUF v) {                                                  \
    for (ptrdiff_t l = 0; l < n; ++l) {                                                            \
        const long o = idx[l * stride];                                                            \
        if (o >= 0) row[o] = v[l];                                                                 \
    }                                                                                              \
}                                                                                                  \
static inline void cscatter_add_##SUF(T *row, const long *idx, ptrdiff_t stride, ptrdiff_t n,     \
                                      vec_##SUF v) {                                              \
    for (ptrdiff_t l = 0; l < n; ++l) {                                                            \
        const long o = idx[l * stride];                                                            \
        if (o >= 0) row[o] += v[l];                                                                \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* S[k][p] = sum_{j: deg2[j] = k} t2t[p][j] sh[j]: the harmonic side of one edge on the grid, per  \
 * degree slot (shared by all channels) */                                                         \
static inline void charm_grid_##SUF(const T *se, const T *t2t, const long *deg2, ptrdiff_t I2,    \
                                    ptrdiff_t P, ptrdiff_t K2, T *S) {                             \
    for (ptrdiff_t q = 0; q < K2 * P; ++q) S[q] = 0;                                               \
    for (ptrdiff_t p = 0; p < P; ++p)                                                              \
        for (ptrdiff_t j = 0; j < I2; ++j) S[deg2[j] * P + p] += t2t[p * I2 + j] * se[j];           \
}                                                                                                  \
/* B[p] = sum_k W2[k] S[k][p] */                                                                   \
static inline void cmix_##SUF(const T *S, const vec_##SUF *W2, ptrdiff_t K2, ptrdiff_t P,        \
                              vec_##SUF *B) {                                                     \
    for (ptrdiff_t p = 0; p < P; ++p) {                                                            \
        vec_##SUF acc = {0};                                                                      \
        for (ptrdiff_t k = 0; k < K2; ++k) acc += S[k * P + p] * W2[k];                            \
        B[p] = acc;                                                                                \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
int conv_forward_##SUF(ptrdiff_t e0, ptrdiff_t e1, ptrdiff_t C, ptrdiff_t I1, ptrdiff_t I2,       \
                       ptrdiff_t P, ptrdiff_t Io, ptrdiff_t K1, ptrdiff_t K2, ptrdiff_t K3,        \
                       ptrdiff_t D1, ptrdiff_t Do, const T *x, const T *sh, const T *w,            \
                       const long *idx1, const long *idxo, const long *deg1, const long *deg2,     \
                       const long *deg3, const T *t1t, const T *t2t, const T *t3t, T *out) {       \
    if (P > MAXP || I1 > MAXI || I2 > MAXI || Io > MAXI || K2 > MAXK2) return -1;                  \
    vec_##SUF U[MAXI], A[MAXP], B[MAXP], Q[MAXI], W2[MAXK2];                                      \
    T S[MAXK2 * MAXP];                                                                             \
    const ptrdiff_t K = K1 + K2 + K3;                                                              \
    for (ptrdiff_t e = e0; e < e1; ++e) {                                                          \
        const T *xe = x + e * D1, *se = sh + e * I2, *we = w + e * K * C;                          \
        T *oe = out + e * Do;                                                                      \
        charm_grid_##SUF(se, t2t, deg2, I2, P, K2, S);                                             \
        for (ptrdiff_t c0 = 0; c0 < C; c0 += VW) {                                                 \
            const ptrdiff_t n = (C - c0 < VW) ? (C - c0) : VW;                                     \
            for (ptrdiff_t i = 0; i < I1; ++i)                                                     \
                U[i] = cgather_##SUF(xe, idx1 + c0 * I1 + i, I1, n)                                \
                       * cload_##SUF(we + deg1[i] * C + c0, n);                                    \
            for (ptrdiff_t k = 0; k < K2; ++k) W2[k] = cload_##SUF(we + (K1 + k) * C + c0, n);      \
            apply_##SUF(t1t, P, I1, U, A);                                                        \
            cmix_##SUF(S, W2, K2, P, B);                                                           \
            for (ptrdiff_t p = 0; p < P; ++p) A[p] *= B[p];                                        \
            apply_##SUF(t3t, Io, P, A, Q);                                                        \
            for (ptrdiff_t k = 0; k < Io; ++k)                                                     \
                cscatter_##SUF(oe, idxo + c0 * Io + k, Io, n,                                      \
                               Q[k] * cload_##SUF(we + (K1 + K2 + deg3[k]) * C + c0, n));          \
        }                                                                                          \
    }                                                                                              \
    return 0;                                                                                      \
}                                                                                                  \
                                                                                                   \
int conv_backward_##SUF(ptrdiff_t e0, ptrdiff_t e1, ptrdiff_t C, ptrdiff_t I1, ptrdiff_t I2,      \
                        ptrdiff_t P, ptrdiff_t Io, ptrdiff_t K1, ptrdiff_t K2, ptrdiff_t K3,       \
                        ptrdiff_t D1, ptrdiff_t Do, const T *x, const T *sh, const T *w,           \
                        const long *idx1, const long *idxo, const long *deg1, const long *deg2,    \
                        const long *deg3, const T *t1t, const T *t2t, const T *t3t, const T *t1,   \
                        const T *t2, const T *t3, const T *gout, T *dx, T *dsh, T *dw) {           \
    if (P > MAXP || I1 > MAXI || I2 > MAXI || Io > MAXI || K2 > MAXK2) return -1;                  \
    vec_##SUF X1[MAXI], U[MAXI], A[MAXP], B[MAXP], H[MAXP], G[MAXI], Q[MAXI], D[MAXI];            \
    vec_##SUF W2[MAXK2], DW[3 * MAXI], DS[MAXK2 * MAXP];                                          \
    T S[MAXK2 * MAXP];                                                                             \
    (void)t2;                                                                                      \
    const ptrdiff_t K = K1 + K2 + K3;                                                              \
    for (ptrdiff_t e = e0; e < e1; ++e) {                                                          \
        const T *xe = x + e * D1, *se = sh + e * I2, *we = w + e * K * C, *ge = gout + e * Do;     \
        T *dxe = dx ? dx + e * D1 : 0, *dwe = dw ? dw + e * K * C : 0;                             \
        charm_grid_##SUF(se, t2t, deg2, I2, P, K2, S);                                             \
        if (dsh) for (ptrdiff_t q = 0; q < K2 * P; ++q) DS[q] = (vec_##SUF){0};                   \
        for (ptrdiff_t c0 = 0; c0 < C; c0 += VW) {                                                 \
            const ptrdiff_t n = (C - c0 < VW) ? (C - c0) : VW;                                     \
            for (ptrdiff_t k = 0; k < K; ++k) DW[k] = (vec_##SUF){0};                             \
            for (ptrdiff_t i = 0; i < I1; ++i) {                                                   \
                X1[i] = cgather_##SUF(xe, idx1 + c0 * I1 + i, I1, n);                              \
                U[i] = X1[i] * cload_##SUF(we + deg1[i] * C + c0, n);                              \
            }                                                                                      \
            for (ptrdiff_t k = 0; k < K2; ++k) W2[k] = cload_##SUF(we + (K1 + k) * C + c0, n);      \
            apply_##SUF(t1t, P, I1, U, A);                                                        \
            cmix_##SUF(S, W2, K2, P, B);                                                           \
            for (ptrdiff_t k = 0; k < Io; ++k) G[k] = cgather_##SUF(ge, idxo + c0 * Io + k, Io, n); \
            if (dwe) {   /* output weights: dw3 = g * Q, Q recomputed */                          \
                for (ptrdiff_t p = 0; p < P; ++p) H[p] = A[p] * B[p];                              \
                apply_##SUF(t3t, Io, P, H, Q);                                                    \
                for (ptrdiff_t k = 0; k < Io; ++k) DW[K1 + K2 + deg3[k]] += G[k] * Q[k];           \
            }                                                                                      \
            for (ptrdiff_t k = 0; k < Io; ++k)                                                     \
                G[k] *= cload_##SUF(we + (K1 + K2 + deg3[k]) * C + c0, n);                         \
            apply_##SUF(t3, P, Io, G, H);                                                         \
            /* node-feature side: dU = T1 (H * B), dx = dU * w1, dw1 += dU * x */                  \
            for (ptrdiff_t p = 0; p < P; ++p) B[p] *= H[p];                                        \
            apply_##SUF(t1, I1, P, B, D);                                                         \
            for (ptrdiff_t i = 0; i < I1; ++i) {                                                   \
                if (dxe) cscatter_add_##SUF(dxe, idx1 + c0 * I1 + i, I1, n,                         \
                                        D[i] * cload_##SUF(we + deg1[i] * C + c0, n));             \
                DW[deg1[i]] += D[i] * X1[i];                                                       \
            }                                                                                      \
            /* harmonic side: with HA = H * A, dw2[k] = sum_p HA S[k]; dS[k] += w2[k] HA */         \
            for (ptrdiff_t p = 0; p < P; ++p) A[p] *= H[p];                                        \
            for (ptrdiff_t k = 0; k < K2; ++k) {                                                   \
                vec_##SUF acc = {0};                                                              \
                const T *Sk = S + k * P;                                                           \
                for (ptrdiff_t p = 0; p < P; ++p) acc += Sk[p] * A[p];                             \
                DW[K1 + k] += acc;                                                                 \
                if (dsh) {                                                                         \
                    vec_##SUF *DSk = DS + k * P;                                                  \
                    for (ptrdiff_t p = 0; p < P; ++p) DSk[p] += W2[k] * A[p];                      \
                }                                                                                  \
            }                                                                                      \
            if (dwe)                                                                               \
                for (ptrdiff_t k = 0; k < K; ++k) cstore_##SUF(dwe + k * C + c0, n, DW[k]);        \
        }                                                                                          \
        if (dsh)   /* dsh[j] = sum_p t2t[p][j] dS[deg2 j][p], lanes summed */                      \
            for (ptrdiff_t j = 0; j < I2; ++j) {                                                   \
                const vec_##SUF *DSk = DS + deg2[j] * P;                                          \
                vec_##SUF acc = {0};                                                              \
                for (ptrdiff_t p = 0; p < P; ++p) acc += t2t[p * I2 + j] * DSk[p];                 \
                T s = 0;                                                                           \
                for (ptrdiff_t l = 0; l < VW; ++l) s += acc[l];                                    \
                dsh[e * I2 + j] = s;                                                               \
            }                                                                                      \
    }                                                                                              \
    return 0;                                                                                      \
}

DEFINE_CONV(float, f32, 8)
DEFINE_CONV(double, f64, 4)
