/* Fused Gaunt convolution on the CPU (MACE's conv_tp) and the whole MACE message step, forward and
 * first-order backward.
 *
 * Per edge e and channel c (tiles of VW channels of one edge):
 *   U[i] = x[s, idx1[c, i]] * w[e, deg1[i], c]             node features (flat e3nn mul_ir) x input weight
 *   V[j] = sh[e, j] * w[e, K1 + deg2[j], c]               edge harmonics x harmonic weight
 *   Q[k] = sum_p T3[p, k] (T1^T U)[p] (T2^T V)[p]          the Gaunt product on the grid
 *   out[r, idxo[c, k]] (+)= w[e, K1 + K2 + deg3[k], c] * Q[k]
 * conv_*: s = r = e (one output row per edge; callers split the edges over threads).
 * msg_*:  s = src[e], r = dst[e], summed over the edges into each receiver (the per-edge messages never
 *         exist): the forward walks receivers v0..v1 and their incoming edges perm[seg[v]..seg[v+1]] (edges
 *         sorted by receiver), the backward walks senders u0..u1 and their outgoing edges (sorted by
 *         sender), so each thread owns the rows it adds into (out[v], dx[u]) and needs no atomics.
 * x [N|E, D1] and out [N|E, Do] are flat rows; w [E, K1+K2+K3, C] is degree-major; idx1 [C, I1] holds
 * offsets into a row of x (-1: coefficient absent, zero), idxo [C, Io] offsets into a row of out
 * (-1: not emitted). Tables: t1t [P, I1], t2t [P, I2], t3t [Io, P]; the backward also reads
 * t1 [I1, P], t3 [P, Io]. Outputs are added into (out, dx zeroed by the caller; lanes whose idx1 offsets
 * coincide, as for several products of one channel, accumulate); dsh [E, I2] (summed over channels) and
 * dw [E, K1+K2+K3, C] are written per edge.
 */
#include <stddef.h>
#include "simd_apply.h"
#include <string.h>

#define MAXP 1024
#define MAXI 512
#define MAXK2 16

#define DEFINE_CONV(T, SUF, VW)                                                                    \
DEFINE_APPLY(T, SUF, VW)                                                                           \
typedef struct {                                                                                   \
    ptrdiff_t C, I1, I2, P, Io, K1, K2, K3, K, D1, Do;                                             \
    const long *idx1, *idxo, *deg1, *deg2, *deg3;                                                  \
    const T *t1t, *t2t, *t3t, *t1, *t3;                                                            \
} cdims_##SUF;                                                                                     \
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
static inline void charm_grid_##SUF(const cdims_##SUF *d, const T *se, T *S) {                     \
    for (ptrdiff_t q = 0; q < d->K2 * d->P; ++q) S[q] = 0;                                         \
    for (ptrdiff_t p = 0; p < d->P; ++p)                                                           \
        for (ptrdiff_t j = 0; j < d->I2; ++j) S[d->deg2[j] * d->P + p] += d->t2t[p * d->I2 + j] * se[j]; \
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
/* one edge: out row oe += conv(x row xe, harmonics S on the grid, weights we) */                  \
static void edge_forward_##SUF(const cdims_##SUF *d, const T *xe, const T *S, const T *we, T *oe) { \
    vec_##SUF U[MAXI], A[MAXP], B[MAXP], Q[MAXI], W2[MAXK2];                                      \
    const ptrdiff_t C = d->C, I1 = d->I1, P = d->P, Io = d->Io, K1 = d->K1, K2 = d->K2;            \
    for (ptrdiff_t c0 = 0; c0 < C; c0 += VW) {                                                     \
        const ptrdiff_t n = (C - c0 < VW) ? (C - c0) : VW;                                         \
        for (ptrdiff_t i = 0; i < I1; ++i)                                                         \
            U[i] = cgather_##SUF(xe, d->idx1 + c0 * I1 + i, I1, n)                                 \
                   * cload_##SUF(we + d->deg1[i] * C + c0, n);                                     \
        for (ptrdiff_t k = 0; k < K2; ++k) W2[k] = cload_##SUF(we + (K1 + k) * C + c0, n);          \
        apply_##SUF(d->t1t, P, I1, U, A);                                                         \
        cmix_##SUF(S, W2, K2, P, B);                                                               \
        for (ptrdiff_t p = 0; p < P; ++p) A[p] *= B[p];                                            \
        apply_##SUF(d->t3t, Io, P, A, Q);                                                         \
        for (ptrdiff_t k = 0; k < Io; ++k)                                                         \
            cscatter_add_##SUF(oe, d->idxo + c0 * Io + k, Io, n,                                   \
                               Q[k] * cload_##SUF(we + (K1 + K2 + d->deg3[k]) * C + c0, n));        \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* one edge, first-order backward: dx row dxe += ..., dsh row and dw row of the edge written       \
 * (each may be NULL); ge is the output gradient row of the edge's receiver */                     \
static void edge_backward_##SUF(const cdims_##SUF *d, const T *xe, const T *S, const T *we,       \
                                const T *ge, T *dxe, T *dshe, T *dwe) {                            \
    vec_##SUF X1[MAXI], U[MAXI], A[MAXP], B[MAXP], H[MAXP], G[MAXI], Q[MAXI], D[MAXI];            \
    vec_##SUF W2[MAXK2], DW[3 * MAXI], DS[MAXK2 * MAXP];                                          \
    const ptrdiff_t C = d->C, I1 = d->I1, I2 = d->I2, P = d->P, Io = d->Io;                        \
    const ptrdiff_t K1 = d->K1, K2 = d->K2, K = d->K;                                              \
    if (dshe) for (ptrdiff_t q = 0; q < K2 * P; ++q) DS[q] = (vec_##SUF){0};                      \
    for (ptrdiff_t c0 = 0; c0 < C; c0 += VW) {                                                     \
        const ptrdiff_t n = (C - c0 < VW) ? (C - c0) : VW;                                         \
        for (ptrdiff_t k = 0; k < K; ++k) DW[k] = (vec_##SUF){0};                                 \
        for (ptrdiff_t i = 0; i < I1; ++i) {                                                       \
            X1[i] = cgather_##SUF(xe, d->idx1 + c0 * I1 + i, I1, n);                               \
            U[i] = X1[i] * cload_##SUF(we + d->deg1[i] * C + c0, n);                               \
        }                                                                                          \
        for (ptrdiff_t k = 0; k < K2; ++k) W2[k] = cload_##SUF(we + (K1 + k) * C + c0, n);          \
        apply_##SUF(d->t1t, P, I1, U, A);                                                         \
        cmix_##SUF(S, W2, K2, P, B);                                                               \
        for (ptrdiff_t k = 0; k < Io; ++k) G[k] = cgather_##SUF(ge, d->idxo + c0 * Io + k, Io, n); \
        if (dwe) {   /* output weights: dw3 = g * Q, Q recomputed */                              \
            for (ptrdiff_t p = 0; p < P; ++p) H[p] = A[p] * B[p];                                  \
            apply_##SUF(d->t3t, Io, P, H, Q);                                                     \
            for (ptrdiff_t k = 0; k < Io; ++k) DW[K1 + K2 + d->deg3[k]] += G[k] * Q[k];            \
        }                                                                                          \
        for (ptrdiff_t k = 0; k < Io; ++k)                                                         \
            G[k] *= cload_##SUF(we + (K1 + K2 + d->deg3[k]) * C + c0, n);                          \
        apply_##SUF(d->t3, P, Io, G, H);                                                          \
        /* node-feature side: dU = T1 (H * B), dx = dU * w1, dw1 += dU * x */                      \
        for (ptrdiff_t p = 0; p < P; ++p) B[p] *= H[p];                                            \
        apply_##SUF(d->t1, I1, P, B, D);                                                          \
        for (ptrdiff_t i = 0; i < I1; ++i) {                                                       \
            if (dxe) cscatter_add_##SUF(dxe, d->idx1 + c0 * I1 + i, I1, n,                         \
                                        D[i] * cload_##SUF(we + d->deg1[i] * C + c0, n));          \
            DW[d->deg1[i]] += D[i] * X1[i];                                                        \
        }                                                                                          \
        /* harmonic side: with HA = H * A, dw2[k] = sum_p HA S[k]; dS[k] += w2[k] HA */             \
        for (ptrdiff_t p = 0; p < P; ++p) A[p] *= H[p];                                            \
        for (ptrdiff_t k = 0; k < K2; ++k) {                                                       \
            vec_##SUF acc = {0};                                                                  \
            const T *Sk = S + k * P;                                                               \
            for (ptrdiff_t p = 0; p < P; ++p) acc += Sk[p] * A[p];                                 \
            DW[K1 + k] += acc;                                                                     \
            if (dshe) {                                                                            \
                vec_##SUF *DSk = DS + k * P;                                                      \
                for (ptrdiff_t p = 0; p < P; ++p) DSk[p] += W2[k] * A[p];                          \
            }                                                                                      \
        }                                                                                          \
        if (dwe)                                                                                   \
            for (ptrdiff_t k = 0; k < K; ++k) cstore_##SUF(dwe + k * C + c0, n, DW[k]);            \
    }                                                                                              \
    if (dshe)   /* dsh[j] = sum_p t2t[p][j] dS[deg2 j][p], lanes summed */                         \
        for (ptrdiff_t j = 0; j < I2; ++j) {                                                       \
            const vec_##SUF *DSk = DS + d->deg2[j] * P;                                           \
            vec_##SUF acc = {0};                                                                  \
            for (ptrdiff_t p = 0; p < P; ++p) acc += d->t2t[p * I2 + j] * DSk[p];                  \
            T s = 0;                                                                               \
            for (ptrdiff_t l = 0; l < VW; ++l) s += acc[l];                                        \
            dshe[j] = s;                                                                           \
        }                                                                                          \
}                                                                                                  \
                                                                                                   \
static inline int cdims_init_##SUF(cdims_##SUF *d, ptrdiff_t C, ptrdiff_t I1, ptrdiff_t I2,       \
                                   ptrdiff_t P, ptrdiff_t Io, ptrdiff_t K1, ptrdiff_t K2,          \
                                   ptrdiff_t K3, ptrdiff_t D1, ptrdiff_t Do, const long *idx1,     \
                                   const long *idxo, const long *deg1, const long *deg2,           \
                                   const long *deg3, const T *t1t, const T *t2t, const T *t3t,     \
                                   const T *t1, const T *t3) {                                     \
    if (P > MAXP || I1 > MAXI || I2 > MAXI || Io > MAXI || K2 > MAXK2) return -1;                  \
    d->C = C; d->I1 = I1; d->I2 = I2; d->P = P; d->Io = Io; d->K1 = K1; d->K2 = K2; d->K3 = K3;     \
    d->K = K1 + K2 + K3; d->D1 = D1; d->Do = Do; d->idx1 = idx1; d->idxo = idxo; d->deg1 = deg1;   \
    d->deg2 = deg2; d->deg3 = deg3; d->t1t = t1t; d->t2t = t2t; d->t3t = t3t; d->t1 = t1; d->t3 = t3; \
    return 0;                                                                                      \
}                                                                                                  \
                                                                                                   \
int conv_forward_##SUF(ptrdiff_t e0, ptrdiff_t e1, ptrdiff_t C, ptrdiff_t I1, ptrdiff_t I2,       \
                       ptrdiff_t P, ptrdiff_t Io, ptrdiff_t K1, ptrdiff_t K2, ptrdiff_t K3,        \
                       ptrdiff_t D1, ptrdiff_t Do, const T *x, const T *sh, const T *w,            \
                       const long *idx1, const long *idxo, const long *deg1, const long *deg2,     \
                       const long *deg3, const T *t1t, const T *t2t, const T *t3t, T *out) {       \
    cdims_##SUF d;                                                                                 \
    if (cdims_init_##SUF(&d, C, I1, I2, P, Io, K1, K2, K3, D1, Do, idx1, idxo, deg1, deg2, deg3,   \
                         t1t, t2t, t3t, 0, 0)) return -1;                                          \
    T S[MAXK2 * MAXP];                                                                             \
    for (ptrdiff_t e = e0; e < e1; ++e) {                                                          \
        charm_grid_##SUF(&d, sh + e * I2, S);                                                      \
        edge_forward_##SUF(&d, x + e * D1, S, w + e * d.K * C, out + e * Do);                       \
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
    cdims_##SUF d;                                                                                 \
    (void)t2;                                                                                      \
    if (cdims_init_##SUF(&d, C, I1, I2, P, Io, K1, K2, K3, D1, Do, idx1, idxo, deg1, deg2, deg3,   \
                         t1t, t2t, t3t, t1, t3)) return -1;                                        \
    T S[MAXK2 * MAXP];                                                                             \
    for (ptrdiff_t e = e0; e < e1; ++e) {                                                          \
        charm_grid_##SUF(&d, sh + e * I2, S);                                                      \
        edge_backward_##SUF(&d, x + e * D1, S, w + e * d.K * C, gout + e * Do,                      \
                            dx ? dx + e * D1 : 0, dsh ? dsh + e * I2 : 0, dw ? dw + e * d.K * C : 0); \
    }                                                                                              \
    return 0;                                                                                      \
}                                                                                                  \
                                                                                                   \
int msg_forward_##SUF(ptrdiff_t v0, ptrdiff_t v1, ptrdiff_t C, ptrdiff_t I1, ptrdiff_t I2,        \
                      ptrdiff_t P, ptrdiff_t Io, ptrdiff_t K1, ptrdiff_t K2, ptrdiff_t K3,         \
                      ptrdiff_t D1, ptrdiff_t Do, const T *x, const T *sh, const T *w,             \
                      const long *idx1, const long *idxo, const long *deg1, const long *deg2,      \
                      const long *deg3, const T *t1t, const T *t2t, const T *t3t,                  \
                      const long *seg, const long *perm, const long *src, T *out) {                \
    cdims_##SUF d;                                                                                 \
    if (cdims_init_##SUF(&d, C, I1, I2, P, Io, K1, K2, K3, D1, Do, idx1, idxo, deg1, deg2, deg3,   \
                         t1t, t2t, t3t, 0, 0)) return -1;                                          \
    T S[MAXK2 * MAXP];                                                                             \
    for (ptrdiff_t v = v0; v < v1; ++v)                                                            \
        for (long j = seg[v]; j < seg[v + 1]; ++j) {                                               \
            const long e = perm[j];                                                                \
            charm_grid_##SUF(&d, sh + e * I2, S);                                                  \
            edge_forward_##SUF(&d, x + src[e] * D1, S, w + e * d.K * C, out + v * Do);              \
        }                                                                                          \
    return 0;                                                                                      \
}                                                                                                  \
                                                                                                   \
int msg_backward_##SUF(ptrdiff_t u0, ptrdiff_t u1, ptrdiff_t C, ptrdiff_t I1, ptrdiff_t I2,       \
                       ptrdiff_t P, ptrdiff_t Io, ptrdiff_t K1, ptrdiff_t K2, ptrdiff_t K3,        \
                       ptrdiff_t D1, ptrdiff_t Do, const T *x, const T *sh, const T *w,            \
                       const long *idx1, const long *idxo, const long *deg1, const long *deg2,     \
                       const long *deg3, const T *t1t, const T *t2t, const T *t3t, const T *t1,    \
                       const T *t3, const long *seg, const long *perm, const long *dst,            \
                       const T *gout, T *dx, T *dsh, T *dw) {                                      \
    cdims_##SUF d;                                                                                 \
    if (cdims_init_##SUF(&d, C, I1, I2, P, Io, K1, K2, K3, D1, Do, idx1, idxo, deg1, deg2, deg3,   \
                         t1t, t2t, t3t, t1, t3)) return -1;                                        \
    T S[MAXK2 * MAXP];                                                                             \
    for (ptrdiff_t u = u0; u < u1; ++u)                                                            \
        for (long j = seg[u]; j < seg[u + 1]; ++j) {                                               \
            const long e = perm[j];                                                                \
            charm_grid_##SUF(&d, sh + e * I2, S);                                                  \
            edge_backward_##SUF(&d, x + u * D1, S, w + e * d.K * C, gout + dst[e] * Do,             \
                                dx ? dx + u * D1 : 0, dsh ? dsh + e * I2 : 0, dw ? dw + e * d.K * C : 0); \
        }                                                                                          \
    return 0;                                                                                      \
}

DEFINE_CONV(float, f32, 8)
DEFINE_CONV(double, f64, 4)
