/* Fused Gaunt many-body (power) product on the CPU (MACE's symmetric contraction), forward and
 * first-order backward.
 *
 * Per node n and channel c (tiles of VW channels; callers split the nodes over threads):
 *   F_nu = T^T (x * w_in[n, nu, deg_in, c])      the nu-th factor on the grid, nu = 0..NU-1
 *   R_nu = F_0 * ... * F_nu                      running products
 *   out[n, idxo[c, k]] = sum_nu w_out[n, nu, deg_out[k], c] * (Pj_nu^T R_nu)[k]
 * x [N, C, Ic] holds each channel's coefficients compactly (MACE's layout), idx_in [I] the offset of
 * dense coefficient i in a channel row (-1: absent); w_in [N, NU, K, C], w_out [N, NU, Ko, C];
 * out [N, Do] flat with idxo [C, Io] (-1: not emitted); the forward adds into out (zeroed by the caller), so
 * lanes sharing output offsets (the chains of one channel) sum. Tables: tt [P, I] (to-grid transposed),
 * pjt [NU, Io, P] (projections transposed); the backward also reads t [I, P] and pj [NU, P, Io].
 * The backward writes dx [N, C, Ic], dw_in, dw_out (same shapes as the weights).
 */
#include <stddef.h>
#include "simd_apply.h"
#include <string.h>

#define MAXP 1024
#define MAXI 512
#define MAXNU 6

#define DEFINE_MB(T, SUF, VW)                                                                      \
DEFINE_APPLY(T, SUF, VW)                                                                           \
static inline vec_##SUF mload_##SUF(const T *row, ptrdiff_t n) {                                  \
    vec_##SUF t = {0};                                                                            \
    if (n == VW) { memcpy(&t, row, sizeof(t)); return t; }                                         \
    for (ptrdiff_t l = 0; l < n; ++l) t[l] = row[l];                                               \
    return t;                                                                                      \
}                                                                                                  \
static inline void mstore_##SUF(T *row, ptrdiff_t n, vec_##SUF v) {                               \
    if (n == VW) { memcpy(row, &v, sizeof(v)); return; }                                           \
    for (ptrdiff_t l = 0; l < n; ++l) row[l] = v[l];                                               \
}                                                                                                  \
/* lanes: channel rows c0+l of one node (row stride Ic), coefficient at offset o (o < 0: zero) */  \
static inline vec_##SUF mgather_##SUF(const T *xn, ptrdiff_t Ic, long o, ptrdiff_t n) {           \
    vec_##SUF t = {0};                                                                            \
    if (o < 0) return t;                                                                           \
    for (ptrdiff_t l = 0; l < n; ++l) t[l] = xn[l * Ic + o];                                       \
    return t;                                                                                      \
}                                                                                                  \
                                                                                                   \
int mb_forward_##SUF(ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t C, ptrdiff_t Ic, ptrdiff_t I,           \
                     ptrdiff_t P, ptrdiff_t Io, ptrdiff_t K, ptrdiff_t Ko, ptrdiff_t NU,           \
                     ptrdiff_t Do, const T *x, const T *w_in, const T *w_out, const long *idx_in,  \
                     const long *idxo, const long *deg_in, const long *deg_out, const T *tt,       \
                     const T *pjt, T *out) {                                                       \
    if (P > MAXP || I > MAXI || Io > MAXI || NU > MAXNU) return -1;                                \
    vec_##SUF X[MAXI], U[MAXI], F[MAXP], R[MAXP], Q[MAXI], O[MAXI];                               \
    for (ptrdiff_t nd = n0; nd < n1; ++nd) {                                                       \
        const T *xn = x + nd * C * Ic;                                                             \
        const T *wi = w_in + nd * NU * K * C, *wo = w_out + nd * NU * Ko * C;                      \
        T *on = out + nd * Do;                                                                     \
        for (ptrdiff_t c0 = 0; c0 < C; c0 += VW) {                                                 \
            const ptrdiff_t n = (C - c0 < VW) ? (C - c0) : VW;                                     \
            for (ptrdiff_t i = 0; i < I; ++i) X[i] = mgather_##SUF(xn + c0 * Ic, Ic, idx_in[i], n); \
            for (ptrdiff_t k = 0; k < Io; ++k) O[k] = (vec_##SUF){0};                             \
            for (ptrdiff_t nu = 0; nu < NU; ++nu) {                                                \
                for (ptrdiff_t i = 0; i < I; ++i)                                                  \
                    U[i] = X[i] * mload_##SUF(wi + (nu * K + deg_in[i]) * C + c0, n);              \
                apply_##SUF(tt, P, I, U, F);                                                      \
                if (nu == 0) memcpy(R, F, sizeof(vec_##SUF) * P);                                 \
                else for (ptrdiff_t p = 0; p < P; ++p) R[p] *= F[p];                               \
                apply_##SUF(pjt + nu * Io * P, Io, P, R, Q);                                      \
                for (ptrdiff_t k = 0; k < Io; ++k)                                                 \
                    O[k] += Q[k] * mload_##SUF(wo + (nu * Ko + deg_out[k]) * C + c0, n);           \
            }                                                                                      \
            for (ptrdiff_t k = 0; k < Io; ++k)                                                     \
                for (ptrdiff_t l = 0; l < n; ++l) {                                                \
                    const long o = idxo[(c0 + l) * Io + k];                                        \
                    if (o >= 0) on[o] += O[k][l];                                                  \
                }                                                                                  \
        }                                                                                          \
    }                                                                                              \
    return 0;                                                                                      \
}                                                                                                  \
                                                                                                   \
int mb_backward_##SUF(ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t C, ptrdiff_t Ic, ptrdiff_t I,          \
                      ptrdiff_t P, ptrdiff_t Io, ptrdiff_t K, ptrdiff_t Ko, ptrdiff_t NU,          \
                      ptrdiff_t Do, const T *x, const T *w_in, const T *w_out,                     \
                      const long *idx_in, const long *idxo, const long *deg_in,                    \
                      const long *deg_out, const T *tt, const T *pjt, const T *t, const T *pj,     \
                      const T *gout, T *dx, T *dw_in, T *dw_out) {                                 \
    if (P > MAXP || I > MAXI || Io > MAXI || NU > MAXNU) return -1;                                \
    vec_##SUF X[MAXI], U[MAXI], Fs[MAXNU * MAXP], Rs[MAXNU * MAXP], S[MAXP], Dl[MAXP];            \
    vec_##SUF G[MAXI], Gw[MAXI], Q[MAXI], DU[MAXI], DX[MAXI], DWI[MAXNU * MAXI], DWO[MAXNU * MAXI];\
    for (ptrdiff_t nd = n0; nd < n1; ++nd) {                                                       \
        const T *xn = x + nd * C * Ic, *gn = gout + nd * Do;                                       \
        const T *wi = w_in + nd * NU * K * C, *wo = w_out + nd * NU * Ko * C;                      \
        for (ptrdiff_t c0 = 0; c0 < C; c0 += VW) {                                                 \
            const ptrdiff_t n = (C - c0 < VW) ? (C - c0) : VW;                                     \
            for (ptrdiff_t i = 0; i < I; ++i) {                                                    \
                X[i] = mgather_##SUF(xn + c0 * Ic, Ic, idx_in[i], n);                              \
                DX[i] = (vec_##SUF){0};                                                           \
            }                                                                                      \
            for (ptrdiff_t k = 0; k < NU * K; ++k) DWI[k] = (vec_##SUF){0};                       \
            for (ptrdiff_t k = 0; k < NU * Ko; ++k) DWO[k] = (vec_##SUF){0};                      \
            for (ptrdiff_t k = 0; k < Io; ++k) {                                                   \
                vec_##SUF gk = {0};                                                               \
                for (ptrdiff_t l = 0; l < n; ++l) {                                                \
                    const long o = idxo[(c0 + l) * Io + k];                                        \
                    gk[l] = o < 0 ? (T)0 : gn[o];                                                  \
                }                                                                                  \
                G[k] = gk;                                                                         \
            }                                                                                      \
            for (ptrdiff_t nu = 0; nu < NU; ++nu) {   /* recompute the factors and products */     \
                vec_##SUF *F = Fs + nu * P, *R = Rs + nu * P;                                     \
                for (ptrdiff_t i = 0; i < I; ++i)                                                  \
                    U[i] = X[i] * mload_##SUF(wi + (nu * K + deg_in[i]) * C + c0, n);              \
                apply_##SUF(tt, P, I, U, F);                                                      \
                if (nu == 0) memcpy(R, F, sizeof(vec_##SUF) * P);                                 \
                else for (ptrdiff_t p = 0; p < P; ++p) R[p] = Rs[(nu - 1) * P + p] * F[p];         \
            }                                                                                      \
            for (ptrdiff_t p = 0; p < P; ++p) S[p] = (vec_##SUF){0};                              \
            for (ptrdiff_t nu = NU - 1; nu >= 0; --nu) {                                           \
                /* output weights and the direct gradient of R_nu */                               \
                apply_##SUF(pjt + nu * Io * P, Io, P, Rs + nu * P, Q);                            \
                for (ptrdiff_t k = 0; k < Io; ++k) {                                               \
                    DWO[nu * Ko + deg_out[k]] += G[k] * Q[k];                                      \
                    Gw[k] = G[k] * mload_##SUF(wo + (nu * Ko + deg_out[k]) * C + c0, n);           \
                }                                                                                  \
                apply_##SUF(pj + nu * P * Io, P, Io, Gw, Dl);                                     \
                for (ptrdiff_t p = 0; p < P; ++p) S[p] += Dl[p];                                   \
                /* dF_nu = S * R_{nu-1}; then S carries dL/dR_{nu-1} += S * F_nu */                \
                if (nu == 0) memcpy(Dl, S, sizeof(vec_##SUF) * P);                                \
                else for (ptrdiff_t p = 0; p < P; ++p) Dl[p] = S[p] * Rs[(nu - 1) * P + p];        \
                apply_##SUF(t, I, P, Dl, DU);                                                     \
                for (ptrdiff_t i = 0; i < I; ++i) {                                                \
                    DX[i] += DU[i] * mload_##SUF(wi + (nu * K + deg_in[i]) * C + c0, n);           \
                    DWI[nu * K + deg_in[i]] += DU[i] * X[i];                                       \
                }                                                                                  \
                for (ptrdiff_t p = 0; p < P; ++p) S[p] *= Fs[nu * P + p];                          \
            }                                                                                      \
            if (dx)                                                                                \
                for (ptrdiff_t i = 0; i < I; ++i) {                                                \
                    if (idx_in[i] < 0) continue;                                                   \
                    for (ptrdiff_t l = 0; l < n; ++l)                                              \
                        dx[(nd * C + c0 + l) * Ic + idx_in[i]] = DX[i][l];                         \
                }                                                                                  \
            if (dw_in)                                                                             \
                for (ptrdiff_t k = 0; k < NU * K; ++k)                                             \
                    mstore_##SUF(dw_in + (nd * NU * K + k) * C + c0, n, DWI[k]);                   \
            if (dw_out)                                                                            \
                for (ptrdiff_t k = 0; k < NU * Ko; ++k)                                            \
                    mstore_##SUF(dw_out + (nd * NU * Ko + k) * C + c0, n, DWO[k]);                 \
        }                                                                                          \
    }                                                                                              \
    return 0;                                                                                      \
}

DEFINE_MB(float, f32, 8)
DEFINE_MB(double, f64, 4)
