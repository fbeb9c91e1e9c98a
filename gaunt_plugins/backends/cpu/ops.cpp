// The Gaunt products as PyTorch operators in the namespace `gaunt`, so that eager calls, TorchScript, torch.compile
// and C++ hosts (LAMMPS's pair_style mace) reach the same kernels through the dispatcher: on CPU tensors the C
// kernels (grid_product.c, conv.c, many_body.c), on CUDA tensors the composed references (ATen operations, below).
//
// Forward operators (CPU: float32/float64; tables in the inputs' dtype or cast to it; int64 index tables):
//   gaunt::grid_product(u [R, I1], v [R, I2], to_grid1 [I1, P], to_grid2 [I2, P], from_grid [P, Io]) -> [R, Io]
//   gaunt::conv(x1 [E, D1], sh [E, I2] dense, weight [E, (K1+K2+K3) C], offsets_in1 [C, I1], offsets_out [C, Io],
//               deg1 [I1], deg2 [I2], deg3 [Io], to_grid1, to_grid2, from_grid, k1, k2, dim_out) -> [E, dim_out]
//   gaunt::message(x [N, D1], sh, weight, edge_index [2, E], num_nodes, <the tables of conv>, k1, k2, dim_out)
//               -> [num_nodes, dim_out], out[v] = sum over the edges e into v of conv(x[src e], sh[e], weight[e])
//   gaunt::many_body(x [N, C, Ic], w_in [N, NU, K, C], w_out [N, NU, Ko, C], offsets_in [I], offsets_out [C, Io],
//               deg_in [I], deg_out [Io], to_grid [I, P], from_grids [NU, P, Io], dim_out) -> [N, dim_out]
// Each has a `<name>_backward(grad, <the forward's inputs>)` returning the gradients of its tensor inputs (one
// fused kernel pass). Autograd on CPU: a first derivative runs the backward operator; one taken with create_graph (it
// will be differentiated again: force training) differentiates the composed reference below (ATen operations)
// instead, so autograd records it and every order is exact (traced by torch.compile, the backward operator
// stays, with the composed double backward). The backward operators' own derivatives (someone
// differentiating them directly) come from the same references: exact second derivatives, no third ones.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <atomic>
#include <cstddef>
#include <functional>

extern "C" {
#define GAUNT_DECLARE(T, SUF)                                                                                       \
    int gp_forward_##SUF(ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, const T*, ptrdiff_t,     \
                         const T*, ptrdiff_t, const T*, const T*, const T*, T*);                                    \
    int gp_backward_##SUF(ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, const T*, ptrdiff_t,    \
                          const T*, ptrdiff_t, const T*, const T*, const T*, const T*, const T*, const T*, T*, T*); \
    int conv_forward_##SUF(ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t,  \
                           ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, const T*, const T*, const T*, const long*,   \
                           const long*, const long*, const long*, const long*, const T*, const T*, const T*, T*);   \
    int conv_backward_##SUF(ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, \
                            ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, const T*, const T*, const T*, const long*,  \
                            const long*, const long*, const long*, const long*, const T*, const T*, const T*,       \
                            const T*, const T*, const T*, const T*, T*, T*, T*);                                    \
    int msg_forward_##SUF(ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t,   \
                          ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, const T*, const T*, const T*, const long*,    \
                          const long*, const long*, const long*, const long*, const T*, const T*, const T*,         \
                          const long*, const long*, const long*, T*);                                               \
    int msg_backward_##SUF(ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t,  \
                           ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, const T*, const T*, const T*, const long*,   \
                           const long*, const long*, const long*, const long*, const T*, const T*, const T*,        \
                           const T*, const T*, const long*, const long*, const long*, const T*, T*, T*, T*);        \
    int mb_forward_##SUF(ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t,    \
                         ptrdiff_t, ptrdiff_t, ptrdiff_t, const T*, const T*, const T*, const long*, const long*,   \
                         const long*, const long*, const T*, const T*, T*);                                         \
    int mb_backward_##SUF(ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t,   \
                          ptrdiff_t, ptrdiff_t, ptrdiff_t, const T*, const T*, const T*, const long*, const long*,  \
                          const long*, const long*, const T*, const T*, const T*, const T*, const T*, T*, T*, T*);
GAUNT_DECLARE(float, f32)
GAUNT_DECLARE(double, f64)
#undef GAUNT_DECLARE
}

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The kernel entry points of one dtype.
template <typename T> struct Kernels;
#define GAUNT_KERNELS(T, SUF)                                                                                       \
    template <> struct Kernels<T> {                                                                                 \
        static constexpr auto gp_forward = gp_forward_##SUF;                                                        \
        static constexpr auto gp_backward = gp_backward_##SUF;                                                      \
        static constexpr auto conv_forward = conv_forward_##SUF;                                                    \
        static constexpr auto conv_backward = conv_backward_##SUF;                                                  \
        static constexpr auto msg_forward = msg_forward_##SUF;                                                      \
        static constexpr auto msg_backward = msg_backward_##SUF;                                                    \
        static constexpr auto mb_forward = mb_forward_##SUF;                                                        \
        static constexpr auto mb_backward = mb_backward_##SUF;                                                      \
    };
GAUNT_KERNELS(float, f32)
GAUNT_KERNELS(double, f64)
#undef GAUNT_KERNELS

constexpr int64_t kRowsPerThread = 2048, kEdgesPerThread = 64, kNodesPerThread = 8, kManyBodyPerThread = 16;

// Run `fn(begin, end)` over [0, count) on torch's intra-op threads; a non-zero return code (sizes past the
// kernel's stack limits, see the #define lines of its source) is an error naming the operator.
template <typename F> void run_split(int64_t count, int64_t grain, const char* what, F fn) {
    std::atomic<int> failed{0};
    at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
        if (fn(begin, end) != 0) failed = 1;
    });
    TORCH_CHECK(!failed, "gaunt::", what, ": sizes past the CPU kernel's limits");
}

void check_input(const Tensor& t, const char* op, const char* name) {
    TORCH_CHECK(t.device().is_cpu(), "gaunt::", op, ": ", name, " must be a CPU tensor, got ", t.device());
    TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "gaunt::", op, ": ", name,
                " must be float32 or float64, got ", t.scalar_type());
}

// A floating table in `dtype`, contiguous (optionally transposed first); an index table as contiguous int64.
Tensor table(const Tensor& t, at::ScalarType dtype, bool transposed = false) {
    return (transposed ? t.transpose(-1, -2) : t).to(dtype).contiguous();
}
Tensor index(const Tensor& t) { return t.to(at::kLong).contiguous(); }
template <typename T> const T* ptr(const Tensor& t) { return t.data_ptr<T>(); }
template <typename T> T* opt_ptr(const Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

// ---- grid product --------------------------------------------------------------------------------------------

Tensor grid_product_cpu(const Tensor& u_, const Tensor& v_, const Tensor& t1, const Tensor& t2, const Tensor& t3) {
    check_input(u_, "grid_product", "u");
    TORCH_CHECK(u_.dim() == 2 && v_.dim() == 2 && u_.size(0) == v_.size(0),
                "gaunt::grid_product: u [R, I1] and v [R, I2] expected, got ", u_.sizes(), " and ", v_.sizes());
    auto dtype = u_.scalar_type();
    Tensor u = u_.contiguous(), v = v_.to(dtype).contiguous();
    Tensor a = table(t1, dtype, true), b = table(t2, dtype, true), c = table(t3, dtype, true);
    int64_t rows = u.size(0), i1 = u.size(1), i2 = v.size(1), p = a.size(0), io = c.size(0);
    Tensor out = at::empty({rows, io}, u.options());
    AT_DISPATCH_FLOATING_TYPES(dtype, "gaunt::grid_product", [&] {
        run_split(rows, kRowsPerThread, "grid_product", [&](int64_t r0, int64_t r1) {
            return Kernels<scalar_t>::gp_forward(r0, r1, i1, i2, p, io, ptr<scalar_t>(u), i1, ptr<scalar_t>(v), i2,
                                                 ptr<scalar_t>(a), ptr<scalar_t>(b), ptr<scalar_t>(c),
                                                 out.data_ptr<scalar_t>());
        });
    });
    return out;
}

std::tuple<Tensor, Tensor> grid_product_backward_cpu(const Tensor& g_, const Tensor& u_, const Tensor& v_,
                                                     const Tensor& t1, const Tensor& t2, const Tensor& t3) {
    auto dtype = u_.scalar_type();
    Tensor u = u_.contiguous(), v = v_.to(dtype).contiguous(), g = g_.to(dtype).contiguous();
    Tensor at_ = table(t1, dtype, true), bt = table(t2, dtype, true), c = table(t3, dtype);
    Tensor a = table(t1, dtype), b = table(t2, dtype);
    int64_t rows = u.size(0), i1 = u.size(1), i2 = v.size(1), p = a.size(1), io = c.size(1);
    Tensor du = at::empty_like(u), dv = at::empty_like(v);
    AT_DISPATCH_FLOATING_TYPES(dtype, "gaunt::grid_product_backward", [&] {
        run_split(rows, kRowsPerThread, "grid_product_backward", [&](int64_t r0, int64_t r1) {
            return Kernels<scalar_t>::gp_backward(r0, r1, i1, i2, p, io, ptr<scalar_t>(u), i1, ptr<scalar_t>(v), i2,
                                                  ptr<scalar_t>(g), ptr<scalar_t>(at_), ptr<scalar_t>(bt),
                                                  ptr<scalar_t>(c), ptr<scalar_t>(a), ptr<scalar_t>(b),
                                                  du.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>());
        });
    });
    return {du, dv};
}

// ---- convolution and message ---------------------------------------------------------------------------------

// The sizes and tables of conv.c for one call.
struct ConvArgs {
    int64_t C, I1, I2, P, Io, K1, K2, K3, D1, Do;
    Tensor off1, offo, deg1, deg2, deg3, t1t, t2t, t3t, t1, t3;
    ConvArgs(const char* op, const Tensor& x, const Tensor& sh, const Tensor& w, const Tensor& offsets_in1,
             const Tensor& offsets_out, const Tensor& d1, const Tensor& d2, const Tensor& d3, const Tensor& y1,
             const Tensor& y2, const Tensor& f, int64_t k1, int64_t k2, int64_t dim_out, bool backward) {
        check_input(x, op, "x");
        auto dtype = x.scalar_type();
        TORCH_CHECK(x.dim() == 2 && sh.dim() == 2 && w.dim() == 2 && sh.size(0) == w.size(0), "gaunt::", op,
                    ": x [rows, D1], sh [E, I2] and weight [E, K C] expected, got ", x.sizes(), ", ", sh.sizes(),
                    ", ", w.sizes());
        off1 = index(offsets_in1);
        offo = index(offsets_out);
        deg1 = index(d1);
        deg2 = index(d2);
        deg3 = index(d3);
        C = off1.size(0);
        I1 = y1.size(0);
        I2 = y2.size(0);
        P = y1.size(1);
        Io = f.size(1);
        K1 = k1;
        K2 = k2;
        D1 = x.size(1);
        Do = dim_out;
        TORCH_CHECK(w.size(1) % C == 0 && w.size(1) / C > K1 + K2, "gaunt::", op, ": weight width ", w.size(1),
                    " is not (K1 + K2 + K3) x ", C, " lanes");
        K3 = w.size(1) / C - K1 - K2;
        TORCH_CHECK(sh.size(1) == I2, "gaunt::", op, ": sh must be [E, ", I2, "], got ", sh.sizes());
        t1t = table(y1, dtype, true);
        t2t = table(y2, dtype, true);
        t3t = table(f, dtype, true);
        if (backward) {
            t1 = table(y1, dtype);
            t3 = table(f, dtype);
        }
    }
};

Tensor conv_cpu(const Tensor& x1, const Tensor& sh_, const Tensor& w_, const Tensor& off1, const Tensor& offo,
                const Tensor& deg1, const Tensor& deg2, const Tensor& deg3, const Tensor& y1, const Tensor& y2,
                const Tensor& f, int64_t k1, int64_t k2, int64_t dim_out) {
    ConvArgs d("conv", x1, sh_, w_, off1, offo, deg1, deg2, deg3, y1, y2, f, k1, k2, dim_out, false);
    auto dtype = x1.scalar_type();
    Tensor x = x1.contiguous(), sh = sh_.to(dtype).contiguous(), w = w_.to(dtype).contiguous();
    TORCH_CHECK(x.size(0) == sh.size(0), "gaunt::conv: x1 and sh need one row per edge, got ", x.sizes(), " and ",
                sh.sizes());
    Tensor out = at::zeros({x.size(0), dim_out}, x.options());
    AT_DISPATCH_FLOATING_TYPES(dtype, "gaunt::conv", [&] {
        run_split(x.size(0), kEdgesPerThread, "conv", [&](int64_t e0, int64_t e1) {
            return Kernels<scalar_t>::conv_forward(
                e0, e1, d.C, d.I1, d.I2, d.P, d.Io, d.K1, d.K2, d.K3, d.D1, d.Do, ptr<scalar_t>(x), ptr<scalar_t>(sh),
                ptr<scalar_t>(w), ptr<long>(d.off1), ptr<long>(d.offo), ptr<long>(d.deg1), ptr<long>(d.deg2),
                ptr<long>(d.deg3), ptr<scalar_t>(d.t1t), ptr<scalar_t>(d.t2t), ptr<scalar_t>(d.t3t),
                out.data_ptr<scalar_t>());
        });
    });
    return out;
}

std::tuple<Tensor, Tensor, Tensor> conv_backward_cpu(const Tensor& g_, const Tensor& x1, const Tensor& sh_,
                                                     const Tensor& w_, const Tensor& off1, const Tensor& offo,
                                                     const Tensor& deg1, const Tensor& deg2, const Tensor& deg3,
                                                     const Tensor& y1, const Tensor& y2, const Tensor& f, int64_t k1,
                                                     int64_t k2, int64_t dim_out) {
    ConvArgs d("conv_backward", x1, sh_, w_, off1, offo, deg1, deg2, deg3, y1, y2, f, k1, k2, dim_out, true);
    auto dtype = x1.scalar_type();
    Tensor x = x1.contiguous(), sh = sh_.to(dtype).contiguous(), w = w_.to(dtype).contiguous();
    Tensor g = g_.to(dtype).contiguous();
    Tensor dx = at::zeros_like(x), dsh = at::empty_like(sh), dw = at::empty_like(w);
    AT_DISPATCH_FLOATING_TYPES(dtype, "gaunt::conv_backward", [&] {
        run_split(x.size(0), kEdgesPerThread, "conv_backward", [&](int64_t e0, int64_t e1) {
            return Kernels<scalar_t>::conv_backward(
                e0, e1, d.C, d.I1, d.I2, d.P, d.Io, d.K1, d.K2, d.K3, d.D1, d.Do, ptr<scalar_t>(x), ptr<scalar_t>(sh),
                ptr<scalar_t>(w), ptr<long>(d.off1), ptr<long>(d.offo), ptr<long>(d.deg1), ptr<long>(d.deg2),
                ptr<long>(d.deg3), ptr<scalar_t>(d.t1t), ptr<scalar_t>(d.t2t), ptr<scalar_t>(d.t3t),
                ptr<scalar_t>(d.t1), nullptr, ptr<scalar_t>(d.t3), ptr<scalar_t>(g), dx.data_ptr<scalar_t>(),
                dsh.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>());
        });
    });
    return {dx, dsh, dw};
}

// Edges grouped by `node` (receivers or senders): (seg [count + 1], perm [E]), the edges of node v being
// perm[seg[v]:seg[v + 1]] in their original order.
std::tuple<Tensor, Tensor> segments(const Tensor& node, int64_t count) {
    Tensor perm = std::get<1>(at::sort(node, std::optional<bool>(true), 0, false)).contiguous();
    Tensor seg = at::zeros({count + 1}, node.options());
    if (node.numel() > 0)
        seg.narrow(0, 1, count).copy_(at::cumsum(at::bincount(node, std::optional<Tensor>(), count), 0));
    return {seg, perm};
}

std::tuple<Tensor, Tensor> edge_ends(const Tensor& edge_index, int64_t num_nodes, int64_t num_rows, const char* op) {
    TORCH_CHECK(edge_index.dim() == 2 && edge_index.size(0) == 2, "gaunt::", op, ": edge_index must be [2, E], got ",
                edge_index.sizes());
    Tensor ei = index(edge_index);
    Tensor src = ei.select(0, 0).contiguous(), dst = ei.select(0, 1).contiguous();
    if (ei.size(1) > 0) {
        TORCH_CHECK(src.min().item<int64_t>() >= 0 && src.max().item<int64_t>() < num_rows, "gaunt::", op,
                    ": senders must index the ", num_rows, " rows of x");
        TORCH_CHECK(dst.min().item<int64_t>() >= 0 && dst.max().item<int64_t>() < num_nodes, "gaunt::", op,
                    ": receivers must be below num_nodes = ", num_nodes);
    }
    return {src, dst};
}

Tensor message_cpu(const Tensor& x_, const Tensor& sh_, const Tensor& w_, const Tensor& edge_index, int64_t num_nodes,
                   const Tensor& off1, const Tensor& offo, const Tensor& deg1, const Tensor& deg2, const Tensor& deg3,
                   const Tensor& y1, const Tensor& y2, const Tensor& f, int64_t k1, int64_t k2, int64_t dim_out) {
    ConvArgs d("message", x_, sh_, w_, off1, offo, deg1, deg2, deg3, y1, y2, f, k1, k2, dim_out, false);
    auto dtype = x_.scalar_type();
    Tensor x = x_.contiguous(), sh = sh_.to(dtype).contiguous(), w = w_.to(dtype).contiguous();
    auto [src, dst] = edge_ends(edge_index, num_nodes, x.size(0), "message");
    auto [seg, perm] = segments(dst, num_nodes);
    Tensor out = at::zeros({num_nodes, dim_out}, x.options());
    AT_DISPATCH_FLOATING_TYPES(dtype, "gaunt::message", [&] {
        run_split(num_nodes, kNodesPerThread, "message", [&](int64_t v0, int64_t v1) {
            return Kernels<scalar_t>::msg_forward(
                v0, v1, d.C, d.I1, d.I2, d.P, d.Io, d.K1, d.K2, d.K3, d.D1, d.Do, ptr<scalar_t>(x), ptr<scalar_t>(sh),
                ptr<scalar_t>(w), ptr<long>(d.off1), ptr<long>(d.offo), ptr<long>(d.deg1), ptr<long>(d.deg2),
                ptr<long>(d.deg3), ptr<scalar_t>(d.t1t), ptr<scalar_t>(d.t2t), ptr<scalar_t>(d.t3t), ptr<long>(seg),
                ptr<long>(perm), ptr<long>(src), out.data_ptr<scalar_t>());
        });
    });
    return out;
}

std::tuple<Tensor, Tensor, Tensor> message_backward_cpu(const Tensor& g_, const Tensor& x_, const Tensor& sh_,
                                                        const Tensor& w_, const Tensor& edge_index, int64_t num_nodes,
                                                        const Tensor& off1, const Tensor& offo, const Tensor& deg1,
                                                        const Tensor& deg2, const Tensor& deg3, const Tensor& y1,
                                                        const Tensor& y2, const Tensor& f, int64_t k1, int64_t k2,
                                                        int64_t dim_out) {
    ConvArgs d("message_backward", x_, sh_, w_, off1, offo, deg1, deg2, deg3, y1, y2, f, k1, k2, dim_out, true);
    auto dtype = x_.scalar_type();
    Tensor x = x_.contiguous(), sh = sh_.to(dtype).contiguous(), w = w_.to(dtype).contiguous();
    Tensor g = g_.to(dtype).contiguous();
    auto [src, dst] = edge_ends(edge_index, num_nodes, x.size(0), "message_backward");
    auto [seg, perm] = segments(src, x.size(0));
    Tensor dx = at::zeros_like(x), dsh = at::empty_like(sh), dw = at::empty_like(w);
    AT_DISPATCH_FLOATING_TYPES(dtype, "gaunt::message_backward", [&] {
        run_split(x.size(0), kNodesPerThread, "message_backward", [&](int64_t u0, int64_t u1) {
            return Kernels<scalar_t>::msg_backward(
                u0, u1, d.C, d.I1, d.I2, d.P, d.Io, d.K1, d.K2, d.K3, d.D1, d.Do, ptr<scalar_t>(x), ptr<scalar_t>(sh),
                ptr<scalar_t>(w), ptr<long>(d.off1), ptr<long>(d.offo), ptr<long>(d.deg1), ptr<long>(d.deg2),
                ptr<long>(d.deg3), ptr<scalar_t>(d.t1t), ptr<scalar_t>(d.t2t), ptr<scalar_t>(d.t3t),
                ptr<scalar_t>(d.t1), ptr<scalar_t>(d.t3), ptr<long>(seg), ptr<long>(perm), ptr<long>(dst),
                ptr<scalar_t>(g), dx.data_ptr<scalar_t>(), dsh.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>());
        });
    });
    return {dx, dsh, dw};
}

// ---- many-body product ---------------------------------------------------------------------------------------

struct ManyBodyArgs {
    int64_t C, Ic, I, P, Io, K, Ko, NU, Do;
    Tensor offi, offo, degi, dego, tt, pjt, t, pj;
    ManyBodyArgs(const char* op, const Tensor& x, const Tensor& w_in, const Tensor& w_out, const Tensor& offsets_in,
                 const Tensor& offsets_out, const Tensor& deg_in, const Tensor& deg_out, const Tensor& y,
                 const Tensor& fs, int64_t dim_out, bool backward) {
        check_input(x, op, "x");
        auto dtype = x.scalar_type();
        TORCH_CHECK(x.dim() == 3 && w_in.dim() == 4 && w_out.dim() == 4 && fs.dim() == 3, "gaunt::", op,
                    ": x [N, C, Ic], w_in [N, NU, K, C], w_out [N, NU, Ko, C], from_grids [NU, P, Io] expected");
        C = x.size(1);
        Ic = x.size(2);
        I = y.size(0);
        P = y.size(1);
        Io = fs.size(2);
        K = w_in.size(2);
        Ko = w_out.size(2);
        NU = fs.size(0);
        Do = dim_out;
        TORCH_CHECK(w_in.size(0) == x.size(0) && w_in.size(1) == NU && w_in.size(3) == C && w_out.size(0) == x.size(0)
                        && w_out.size(1) == NU && w_out.size(3) == C,
                    "gaunt::", op, ": weights must be [N, NU, K, C] with N = ", x.size(0), ", NU = ", NU, ", C = ", C,
                    ", got ", w_in.sizes(), " and ", w_out.sizes());
        offi = index(offsets_in);
        offo = index(offsets_out);
        degi = index(deg_in);
        dego = index(deg_out);
        tt = table(y, dtype, true);
        pjt = table(fs, dtype, true);
        if (backward) {
            t = table(y, dtype);
            pj = table(fs, dtype);
        }
    }
};

Tensor many_body_cpu(const Tensor& x_, const Tensor& wi_, const Tensor& wo_, const Tensor& offi, const Tensor& offo,
                     const Tensor& degi, const Tensor& dego, const Tensor& y, const Tensor& fs, int64_t dim_out) {
    ManyBodyArgs d("many_body", x_, wi_, wo_, offi, offo, degi, dego, y, fs, dim_out, false);
    auto dtype = x_.scalar_type();
    Tensor x = x_.contiguous(), wi = wi_.to(dtype).contiguous(), wo = wo_.to(dtype).contiguous();
    Tensor out = at::zeros({x.size(0), dim_out}, x.options());
    AT_DISPATCH_FLOATING_TYPES(dtype, "gaunt::many_body", [&] {
        run_split(x.size(0), kManyBodyPerThread, "many_body", [&](int64_t n0, int64_t n1) {
            return Kernels<scalar_t>::mb_forward(n0, n1, d.C, d.Ic, d.I, d.P, d.Io, d.K, d.Ko, d.NU, d.Do,
                                                 ptr<scalar_t>(x), ptr<scalar_t>(wi), ptr<scalar_t>(wo),
                                                 ptr<long>(d.offi), ptr<long>(d.offo), ptr<long>(d.degi),
                                                 ptr<long>(d.dego), ptr<scalar_t>(d.tt), ptr<scalar_t>(d.pjt),
                                                 out.data_ptr<scalar_t>());
        });
    });
    return out;
}

std::tuple<Tensor, Tensor, Tensor> many_body_backward_cpu(const Tensor& g_, const Tensor& x_, const Tensor& wi_,
                                                          const Tensor& wo_, const Tensor& offi, const Tensor& offo,
                                                          const Tensor& degi, const Tensor& dego, const Tensor& y,
                                                          const Tensor& fs, int64_t dim_out) {
    ManyBodyArgs d("many_body_backward", x_, wi_, wo_, offi, offo, degi, dego, y, fs, dim_out, true);
    auto dtype = x_.scalar_type();
    Tensor x = x_.contiguous(), wi = wi_.to(dtype).contiguous(), wo = wo_.to(dtype).contiguous();
    Tensor g = g_.to(dtype).contiguous();
    Tensor dx = at::zeros_like(x), dwi = at::empty_like(wi), dwo = at::empty_like(wo);
    AT_DISPATCH_FLOATING_TYPES(dtype, "gaunt::many_body_backward", [&] {
        run_split(x.size(0), kManyBodyPerThread, "many_body_backward", [&](int64_t n0, int64_t n1) {
            return Kernels<scalar_t>::mb_backward(n0, n1, d.C, d.Ic, d.I, d.P, d.Io, d.K, d.Ko, d.NU, d.Do,
                                                  ptr<scalar_t>(x), ptr<scalar_t>(wi), ptr<scalar_t>(wo),
                                                  ptr<long>(d.offi), ptr<long>(d.offo), ptr<long>(d.degi),
                                                  ptr<long>(d.dego), ptr<scalar_t>(d.tt), ptr<scalar_t>(d.pjt),
                                                  ptr<scalar_t>(d.t), ptr<scalar_t>(d.pj), ptr<scalar_t>(g),
                                                  dx.data_ptr<scalar_t>(), dwi.data_ptr<scalar_t>(),
                                                  dwo.data_ptr<scalar_t>());
        });
    });
    return {dx, dwi, dwo};
}

// ---- autograd ------------------------------------------------------------------------------------------------

c10::OperatorHandle op(const char* name) {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

// ---- the composed references (ATen, differentiable at every order) -----------------------------------------------
// What second derivatives differentiate: the same products as the kernels, as plain tensor operations.

// x [B, D] -> [B, C, I] through offsets [C, I] (-1: zero).
Tensor gather_dense(const Tensor& x, const Tensor& offsets) {
    auto d = x.size(1);
    Tensor idx = at::where(offsets < 0, at::full_like(offsets, d), offsets).reshape(-1);
    return at::cat({x, at::zeros({x.size(0), 1}, x.options())}, 1).index_select(1, idx)
        .view({x.size(0), offsets.size(0), offsets.size(1)});
}

// offsets [C, Io] -> [C Io] flat positions, the coefficients not emitted (-1) sent to one extra slot `dim_out`,
// dropped afterwards: no data-dependent shape (torch.compile traces the helpers below).
Tensor flat_targets(const Tensor& offsets, int64_t dim_out) {
    Tensor flat = offsets.reshape(-1);
    return at::where(flat < 0, at::full_like(flat, dim_out), flat);
}

// y [B, C, Io] -> [B, dim_out] through offsets [C, Io] (-1: not emitted; shared offsets sum).
Tensor scatter_flat(const Tensor& y, const Tensor& offsets, int64_t dim_out) {
    Tensor target = flat_targets(offsets, dim_out);
    return at::zeros({y.size(0), dim_out + 1}, y.options())
        .index_add(1, target, y.reshape({y.size(0), -1}))
        .narrow(1, 0, dim_out);
}

// The same when every flat coefficient has exactly one dense source (a convolution's outputs): a gather, which
// autograd and the CPU run faster than the scatter, through the inverse of the offsets.
Tensor gather_flat(const Tensor& y, const Tensor& offsets, int64_t dim_out) {
    Tensor target = flat_targets(offsets, dim_out);
    // the ATen operator, not Tensor::index_put_'s indexing helper (which sets a device guard of its own)
    c10::List<std::optional<Tensor>> where({target});
    Tensor source = at::index_put(at::zeros({dim_out + 1}, target.options()), where,
                                  at::arange(target.size(0), target.options()))
                        .narrow(0, 0, dim_out);
    return y.reshape({y.size(0), -1}).index_select(1, source);
}

Tensor per_coefficient(const Tensor& w, const Tensor& deg) {  // w [B, K, C] -> [B, C, I] by degree slot
    return w.transpose(1, 2).index_select(2, deg);
}

Tensor grid_product_ref(const Tensor& u, const Tensor& v, const Tensor& t1, const Tensor& t2, const Tensor& t3) {
    auto dt = u.scalar_type();
    return at::matmul(at::matmul(u, t1.to(dt)) * at::matmul(v, t2.to(dt)), t3.to(dt));
}

Tensor conv_ref(const Tensor& x, const Tensor& sh, const Tensor& w, const Tensor& off1, const Tensor& offo,
                const Tensor& deg1, const Tensor& deg2, const Tensor& deg3, const Tensor& y1, const Tensor& y2,
                const Tensor& f, int64_t k1, int64_t k2, int64_t dim_out) {
    auto dt = x.scalar_type();
    int64_t c = off1.size(0), k = w.size(1) / c;
    Tensor wv = w.view({w.size(0), k, c});
    Tensor a = at::matmul(gather_dense(x, off1) * per_coefficient(wv.narrow(1, 0, k1), index(deg1)), y1.to(dt));
    Tensor mask2 = at::one_hot(index(deg2), k2).t().to(dt);                       // [K2, I2]
    Tensor s = at::matmul(sh.unsqueeze(1) * mask2, y2.to(dt));                    // [E, K2, P]
    Tensor b = at::bmm(wv.narrow(1, k1, k2).transpose(1, 2), s);                  // [E, C, P]
    Tensor out = at::matmul(a * b, f.to(dt)) * per_coefficient(wv.narrow(1, k1 + k2, k - k1 - k2), index(deg3));
    return gather_flat(out, index(offo), dim_out);
}

Tensor message_ref(const Tensor& x, const Tensor& sh, const Tensor& w, const Tensor& ei, int64_t num_nodes,
                   const Tensor& off1, const Tensor& offo, const Tensor& deg1, const Tensor& deg2, const Tensor& deg3,
                   const Tensor& y1, const Tensor& y2, const Tensor& f, int64_t k1, int64_t k2, int64_t dim_out) {
    Tensor e = index(ei);
    Tensor msg = conv_ref(x.index_select(0, e.select(0, 0)), sh, w, off1, offo, deg1, deg2, deg3, y1, y2, f, k1, k2,
                          dim_out);
    return at::zeros({num_nodes, dim_out}, msg.options()).index_add(0, e.select(0, 1), msg);
}

Tensor many_body_ref(const Tensor& x, const Tensor& wi, const Tensor& wo, const Tensor& offi, const Tensor& offo,
                     const Tensor& degi, const Tensor& dego, const Tensor& y, const Tensor& fs, int64_t dim_out) {
    auto dt = x.scalar_type();
    Tensor oi = index(offi), di = index(degi), dgo = index(dego), yt = y.to(dt), ft = fs.to(dt);
    Tensor idx = at::where(oi < 0, at::full_like(oi, x.size(2)), oi);
    Tensor xd = at::cat({x, at::zeros({x.size(0), x.size(1), 1}, x.options())}, 2).index_select(2, idx);
    Tensor running, out;
    for (int64_t nu = 0; nu < ft.size(0); ++nu) {
        Tensor fac = at::matmul(xd * per_coefficient(wi.select(1, nu), di), yt);
        running = nu == 0 ? fac : running * fac;
        Tensor term = at::matmul(running, ft.select(0, nu)) * per_coefficient(wo.select(1, nu), dgo);
        out = nu == 0 ? term : out + term;
    }
    return scatter_flat(out, index(offo), dim_out);
}

// The vector-Jacobian product of a backward operator, (g, inputs) -> J(inputs)^T g, with the gradients `gg` of
// its outputs: differentiates `composed(inputs)` twice on detached copies (partial derivatives; autograd carries
// them on through g and the inputs). Returns {d g, d inputs...}; exact second derivatives, no third ones.
variable_list double_backward(const std::function<Tensor(const variable_list&)>& composed,
                              const variable_list& inputs, const Tensor& g, const variable_list& gg) {
    at::AutoGradMode enable(true);
    variable_list xs;
    for (const auto& t : inputs) xs.push_back(t.detach().requires_grad_(true));
    Tensor g_ = g.detach().requires_grad_(true);
    Tensor out = composed(xs);
    variable_list first = torch::autograd::grad({out}, xs, {g_}, /*retain_graph=*/true, /*create_graph=*/true,
                                                /*allow_unused=*/true);
    variable_list outs, grads;
    for (size_t i = 0; i < first.size(); ++i)
        if (first[i].defined() && first[i].requires_grad() && i < gg.size() && gg[i].defined()) {
            outs.push_back(first[i]);
            grads.push_back(gg[i]);
        }
    variable_list wrt{g_};
    wrt.insert(wrt.end(), xs.begin(), xs.end());
    if (outs.empty()) return variable_list(wrt.size());
    return torch::autograd::grad(outs, wrt, grads, /*retain_graph=*/false, /*create_graph=*/false,
                                 /*allow_unused=*/true);
}


// Under create_graph (a first derivative that will itself be differentiated: force training) the gradients of a
// forward operator come from its composed reference on the saved inputs, so that autograd records them: the same
// values as the fused backward, and every higher order exact. `need` marks the inputs that want a gradient.
variable_list composed_grads(const std::function<Tensor(const variable_list&)>& composed, const variable_list& inputs,
                             const std::vector<bool>& need, const Tensor& g) {
    variable_list wrt;
    for (size_t i = 0; i < inputs.size(); ++i)
        if (need[i]) wrt.push_back(inputs[i]);
    variable_list result(inputs.size());
    if (wrt.empty()) return result;
    Tensor out = composed(inputs);
    variable_list grads = torch::autograd::grad({out}, wrt, {g}, /*retain_graph=*/true, /*create_graph=*/true,
                                                /*allow_unused=*/true);
    for (size_t i = 0, k = 0; i < inputs.size(); ++i)
        if (need[i]) {
            result[i] = grads[k].defined() ? grads[k] : at::zeros_like(inputs[i]);
            ++k;
        }
    return result;
}

// Whether a first derivative taken with create_graph differentiates the composed reference: in eager mode and
// TorchScript, yes (as fast as the fused backward followed by its own double backward, and fewer passes). When
// the gradient is being traced (torch.compile: fake or functional tensors, which carry the Python dispatch key)
// the fused backward operator stays one node of the graph instead; its double backward is the composed one.
bool composed_first_derivative(const Tensor& grad) {
    return at::GradMode::is_enabled() && !grad.key_set().has(c10::DispatchKey::Python);
}

std::vector<bool> needs(AutogradContext* ctx, size_t count) {
    std::vector<bool> need(count);
    for (size_t i = 0; i < count; ++i) need[i] = ctx->needs_input_grad(i);
    return need;
}

// The forward operators under autograd: the forward below autograd, the backward through the backward operator
// (a fused kernel pass), or under create_graph through the composed reference (composed_first_derivative).
struct GridProductFn : public torch::autograd::Function<GridProductFn> {
    static Tensor forward(AutogradContext* ctx, Tensor u, Tensor v, Tensor t1, Tensor t2, Tensor t3) {
        ctx->save_for_backward({u, v, t1, t2, t3});
        at::AutoDispatchBelowADInplaceOrView guard;
        return op("gaunt::grid_product").typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                      const Tensor&)>().call(u, v, t1, t2, t3);
    }
    static variable_list backward(AutogradContext* ctx, variable_list grads) {
        auto s = ctx->get_saved_variables();
        if (composed_first_derivative(grads[0])) {
            auto r = composed_grads([&](const variable_list& in) {
                return grid_product_ref(in[0], in[1], s[2], s[3], s[4]);
            }, {s[0], s[1]}, needs(ctx, 2), grads[0]);
            return {r[0], r[1], Tensor(), Tensor(), Tensor()};
        }
        auto r = op("gaunt::grid_product_backward")
                     .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                       const Tensor&, const Tensor&)>()
                     .call(grads[0], s[0], s[1], s[2], s[3], s[4]);
        return {std::get<0>(r), std::get<1>(r), Tensor(), Tensor(), Tensor()};
    }
};

struct ConvFn : public torch::autograd::Function<ConvFn> {
    static Tensor forward(AutogradContext* ctx, Tensor x, Tensor sh, Tensor w, Tensor off1, Tensor offo, Tensor d1,
                          Tensor d2, Tensor d3, Tensor y1, Tensor y2, Tensor f, int64_t k1, int64_t k2,
                          int64_t dim_out) {
        ctx->save_for_backward({x, sh, w, off1, offo, d1, d2, d3, y1, y2, f});
        ctx->saved_data["k1"] = k1;
        ctx->saved_data["k2"] = k2;
        ctx->saved_data["dim_out"] = dim_out;
        at::AutoDispatchBelowADInplaceOrView guard;
        return op("gaunt::conv").typed<decltype(conv_cpu)>().call(x, sh, w, off1, offo, d1, d2, d3, y1, y2, f, k1, k2,
                                                                 dim_out);
    }
    static variable_list backward(AutogradContext* ctx, variable_list grads) {
        auto s = ctx->get_saved_variables();
        if (composed_first_derivative(grads[0])) {
            int64_t k1 = ctx->saved_data["k1"].toInt(), k2 = ctx->saved_data["k2"].toInt();
            int64_t dim_out = ctx->saved_data["dim_out"].toInt();
            auto r = composed_grads([&](const variable_list& in) {
                return conv_ref(in[0], in[1], in[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], k1, k2, dim_out);
            }, {s[0], s[1], s[2]}, needs(ctx, 3), grads[0]);
            r.resize(14);
            return r;
        }
        auto r = op("gaunt::conv_backward").typed<decltype(conv_backward_cpu)>().call(
            grads[0], s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], ctx->saved_data["k1"].toInt(),
            ctx->saved_data["k2"].toInt(), ctx->saved_data["dim_out"].toInt());
        variable_list out(14);
        out[0] = std::get<0>(r);
        out[1] = std::get<1>(r);
        out[2] = std::get<2>(r);
        return out;
    }
};

struct MessageFn : public torch::autograd::Function<MessageFn> {
    static Tensor forward(AutogradContext* ctx, Tensor x, Tensor sh, Tensor w, Tensor ei, int64_t num_nodes,
                          Tensor off1, Tensor offo, Tensor d1, Tensor d2, Tensor d3, Tensor y1, Tensor y2, Tensor f,
                          int64_t k1, int64_t k2, int64_t dim_out) {
        ctx->save_for_backward({x, sh, w, ei, off1, offo, d1, d2, d3, y1, y2, f});
        ctx->saved_data["num_nodes"] = num_nodes;
        ctx->saved_data["k1"] = k1;
        ctx->saved_data["k2"] = k2;
        ctx->saved_data["dim_out"] = dim_out;
        at::AutoDispatchBelowADInplaceOrView guard;
        return op("gaunt::message").typed<decltype(message_cpu)>().call(x, sh, w, ei, num_nodes, off1, offo, d1, d2,
                                                                       d3, y1, y2, f, k1, k2, dim_out);
    }
    static variable_list backward(AutogradContext* ctx, variable_list grads) {
        auto s = ctx->get_saved_variables();
        if (composed_first_derivative(grads[0])) {
            int64_t n = ctx->saved_data["num_nodes"].toInt(), k1 = ctx->saved_data["k1"].toInt();
            int64_t k2 = ctx->saved_data["k2"].toInt(), dim_out = ctx->saved_data["dim_out"].toInt();
            auto r = composed_grads([&](const variable_list& in) {
                return message_ref(in[0], in[1], in[2], s[3], n, s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11], k1,
                                   k2, dim_out);
            }, {s[0], s[1], s[2]}, needs(ctx, 3), grads[0]);
            r.resize(16);
            return r;
        }
        auto r = op("gaunt::message_backward").typed<decltype(message_backward_cpu)>().call(
            grads[0], s[0], s[1], s[2], s[3], ctx->saved_data["num_nodes"].toInt(), s[4], s[5], s[6], s[7], s[8],
            s[9], s[10], s[11], ctx->saved_data["k1"].toInt(), ctx->saved_data["k2"].toInt(),
            ctx->saved_data["dim_out"].toInt());
        variable_list out(16);
        out[0] = std::get<0>(r);
        out[1] = std::get<1>(r);
        out[2] = std::get<2>(r);
        return out;
    }
};

struct ManyBodyFn : public torch::autograd::Function<ManyBodyFn> {
    static Tensor forward(AutogradContext* ctx, Tensor x, Tensor wi, Tensor wo, Tensor offi, Tensor offo,
                          Tensor degi, Tensor dego, Tensor y, Tensor fs, int64_t dim_out) {
        ctx->save_for_backward({x, wi, wo, offi, offo, degi, dego, y, fs});
        ctx->saved_data["dim_out"] = dim_out;
        at::AutoDispatchBelowADInplaceOrView guard;
        return op("gaunt::many_body").typed<decltype(many_body_cpu)>().call(x, wi, wo, offi, offo, degi, dego, y, fs,
                                                                           dim_out);
    }
    static variable_list backward(AutogradContext* ctx, variable_list grads) {
        auto s = ctx->get_saved_variables();
        if (composed_first_derivative(grads[0])) {
            int64_t dim_out = ctx->saved_data["dim_out"].toInt();
            auto r = composed_grads([&](const variable_list& in) {
                return many_body_ref(in[0], in[1], in[2], s[3], s[4], s[5], s[6], s[7], s[8], dim_out);
            }, {s[0], s[1], s[2]}, needs(ctx, 3), grads[0]);
            r.resize(10);
            return r;
        }
        auto r = op("gaunt::many_body_backward").typed<decltype(many_body_backward_cpu)>().call(
            grads[0], s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], ctx->saved_data["dim_out"].toInt());
        variable_list out(10);
        out[0] = std::get<0>(r);
        out[1] = std::get<1>(r);
        out[2] = std::get<2>(r);
        return out;
    }
};

Tensor grid_product_autograd(const Tensor& u, const Tensor& v, const Tensor& t1, const Tensor& t2, const Tensor& t3) {
    return GridProductFn::apply(u, v, t1, t2, t3);
}
Tensor conv_autograd(const Tensor& x, const Tensor& sh, const Tensor& w, const Tensor& off1, const Tensor& offo,
                     const Tensor& d1, const Tensor& d2, const Tensor& d3, const Tensor& y1, const Tensor& y2,
                     const Tensor& f, int64_t k1, int64_t k2, int64_t dim_out) {
    return ConvFn::apply(x, sh, w, off1, offo, d1, d2, d3, y1, y2, f, k1, k2, dim_out);
}
Tensor message_autograd(const Tensor& x, const Tensor& sh, const Tensor& w, const Tensor& ei, int64_t num_nodes,
                        const Tensor& off1, const Tensor& offo, const Tensor& d1, const Tensor& d2, const Tensor& d3,
                        const Tensor& y1, const Tensor& y2, const Tensor& f, int64_t k1, int64_t k2, int64_t dim_out) {
    return MessageFn::apply(x, sh, w, ei, num_nodes, off1, offo, d1, d2, d3, y1, y2, f, k1, k2, dim_out);
}
Tensor many_body_autograd(const Tensor& x, const Tensor& wi, const Tensor& wo, const Tensor& offi, const Tensor& offo,
                          const Tensor& degi, const Tensor& dego, const Tensor& y, const Tensor& fs, int64_t dim_out) {
    return ManyBodyFn::apply(x, wi, wo, offi, offo, degi, dego, y, fs, dim_out);
}

// The backward operators under autograd: the kernel below autograd; their own gradients (second derivatives of
// the forward operators) from the composed references.
struct GridProductBackwardFn : public torch::autograd::Function<GridProductBackwardFn> {
    static variable_list forward(AutogradContext* ctx, Tensor g, Tensor u, Tensor v, Tensor t1, Tensor t2,
                                 Tensor t3) {
        ctx->save_for_backward({g, u, v, t1, t2, t3});
        at::AutoDispatchBelowADInplaceOrView guard;
        auto r = op("gaunt::grid_product_backward").typed<decltype(grid_product_backward_cpu)>().call(
            g, u, v, t1, t2, t3);
        return {std::get<0>(r), std::get<1>(r)};
    }
    static variable_list backward(AutogradContext* ctx, variable_list gg) {
        auto s = ctx->get_saved_variables();
        auto composed = [&](const variable_list& in) { return grid_product_ref(in[0], in[1], s[3], s[4], s[5]); };
        auto r = double_backward(composed, {s[1], s[2]}, s[0], gg);
        return {r[0], r[1], r[2], Tensor(), Tensor(), Tensor()};
    }
};

struct ConvBackwardFn : public torch::autograd::Function<ConvBackwardFn> {
    static variable_list forward(AutogradContext* ctx, Tensor g, Tensor x, Tensor sh, Tensor w, Tensor off1,
                                 Tensor offo, Tensor d1, Tensor d2, Tensor d3, Tensor y1, Tensor y2, Tensor f,
                                 int64_t k1, int64_t k2, int64_t dim_out) {
        ctx->save_for_backward({g, x, sh, w, off1, offo, d1, d2, d3, y1, y2, f});
        ctx->saved_data["k1"] = k1;
        ctx->saved_data["k2"] = k2;
        ctx->saved_data["dim_out"] = dim_out;
        at::AutoDispatchBelowADInplaceOrView guard;
        auto r = op("gaunt::conv_backward").typed<decltype(conv_backward_cpu)>().call(g, x, sh, w, off1, offo, d1, d2,
                                                                                     d3, y1, y2, f, k1, k2, dim_out);
        return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
    }
    static variable_list backward(AutogradContext* ctx, variable_list gg) {
        auto s = ctx->get_saved_variables();
        int64_t k1 = ctx->saved_data["k1"].toInt(), k2 = ctx->saved_data["k2"].toInt();
        int64_t dim_out = ctx->saved_data["dim_out"].toInt();
        auto r = double_backward([&](const variable_list& in) {
            return conv_ref(in[0], in[1], in[2], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11], k1, k2, dim_out);
        }, {s[1], s[2], s[3]}, s[0], gg);
        variable_list out(15);
        for (int i = 0; i < 4; ++i) out[i] = r[i];
        return out;
    }
};

struct MessageBackwardFn : public torch::autograd::Function<MessageBackwardFn> {
    static variable_list forward(AutogradContext* ctx, Tensor g, Tensor x, Tensor sh, Tensor w, Tensor ei,
                                 int64_t num_nodes, Tensor off1, Tensor offo, Tensor d1, Tensor d2, Tensor d3, Tensor y1,
                                 Tensor y2, Tensor f, int64_t k1, int64_t k2, int64_t dim_out) {
        ctx->save_for_backward({g, x, sh, w, ei, off1, offo, d1, d2, d3, y1, y2, f});
        ctx->saved_data["num_nodes"] = num_nodes;
        ctx->saved_data["k1"] = k1;
        ctx->saved_data["k2"] = k2;
        ctx->saved_data["dim_out"] = dim_out;
        at::AutoDispatchBelowADInplaceOrView guard;
        auto r = op("gaunt::message_backward").typed<decltype(message_backward_cpu)>().call(
            g, x, sh, w, ei, num_nodes, off1, offo, d1, d2, d3, y1, y2, f, k1, k2, dim_out);
        return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
    }
    static variable_list backward(AutogradContext* ctx, variable_list gg) {
        auto s = ctx->get_saved_variables();
        int64_t n = ctx->saved_data["num_nodes"].toInt(), k1 = ctx->saved_data["k1"].toInt();
        int64_t k2 = ctx->saved_data["k2"].toInt(), dim_out = ctx->saved_data["dim_out"].toInt();
        auto r = double_backward([&](const variable_list& in) {
            return message_ref(in[0], in[1], in[2], s[4], n, s[5], s[6], s[7], s[8], s[9], s[10], s[11], s[12], k1, k2,
                               dim_out);
        }, {s[1], s[2], s[3]}, s[0], gg);
        variable_list out(17);
        for (int i = 0; i < 4; ++i) out[i] = r[i];
        return out;
    }
};

struct ManyBodyBackwardFn : public torch::autograd::Function<ManyBodyBackwardFn> {
    static variable_list forward(AutogradContext* ctx, Tensor g, Tensor x, Tensor wi, Tensor wo, Tensor offi,
                                 Tensor offo, Tensor degi, Tensor dego, Tensor y, Tensor fs, int64_t dim_out) {
        ctx->save_for_backward({g, x, wi, wo, offi, offo, degi, dego, y, fs});
        ctx->saved_data["dim_out"] = dim_out;
        at::AutoDispatchBelowADInplaceOrView guard;
        auto r = op("gaunt::many_body_backward").typed<decltype(many_body_backward_cpu)>().call(
            g, x, wi, wo, offi, offo, degi, dego, y, fs, dim_out);
        return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
    }
    static variable_list backward(AutogradContext* ctx, variable_list gg) {
        auto s = ctx->get_saved_variables();
        int64_t dim_out = ctx->saved_data["dim_out"].toInt();
        auto r = double_backward([&](const variable_list& in) {
            return many_body_ref(in[0], in[1], in[2], s[4], s[5], s[6], s[7], s[8], s[9], dim_out);
        }, {s[1], s[2], s[3]}, s[0], gg);
        variable_list out(11);
        for (int i = 0; i < 4; ++i) out[i] = r[i];
        return out;
    }
};

std::tuple<Tensor, Tensor> grid_product_backward_autograd(const Tensor& g, const Tensor& u, const Tensor& v,
                                                          const Tensor& t1, const Tensor& t2, const Tensor& t3) {
    auto r = GridProductBackwardFn::apply(g, u, v, t1, t2, t3);
    return {r[0], r[1]};
}
std::tuple<Tensor, Tensor, Tensor> conv_backward_autograd(const Tensor& g, const Tensor& x, const Tensor& sh,
                                                          const Tensor& w, const Tensor& off1, const Tensor& offo,
                                                          const Tensor& d1, const Tensor& d2, const Tensor& d3,
                                                          const Tensor& y1, const Tensor& y2, const Tensor& f,
                                                          int64_t k1, int64_t k2, int64_t dim_out) {
    auto r = ConvBackwardFn::apply(g, x, sh, w, off1, offo, d1, d2, d3, y1, y2, f, k1, k2, dim_out);
    return {r[0], r[1], r[2]};
}
std::tuple<Tensor, Tensor, Tensor> message_backward_autograd(const Tensor& g, const Tensor& x, const Tensor& sh,
                                                             const Tensor& w, const Tensor& ei, int64_t num_nodes,
                                                             const Tensor& off1, const Tensor& offo, const Tensor& d1,
                                                             const Tensor& d2, const Tensor& d3, const Tensor& y1,
                                                             const Tensor& y2, const Tensor& f, int64_t k1, int64_t k2,
                                                             int64_t dim_out) {
    auto r = MessageBackwardFn::apply(g, x, sh, w, ei, num_nodes, off1, offo, d1, d2, d3, y1, y2, f, k1, k2, dim_out);
    return {r[0], r[1], r[2]};
}
std::tuple<Tensor, Tensor, Tensor> many_body_backward_autograd(const Tensor& g, const Tensor& x, const Tensor& wi,
                                                               const Tensor& wo, const Tensor& offi, const Tensor& offo,
                                                               const Tensor& degi, const Tensor& dego, const Tensor& y,
                                                               const Tensor& fs, int64_t dim_out) {
    auto r = ManyBodyBackwardFn::apply(g, x, wi, wo, offi, offo, degi, dego, y, fs, dim_out);
    return {r[0], r[1], r[2]};
}

// ---- CUDA: the composed references -----------------------------------------------------------------------------
// On CUDA tensors the operators run the composed references above: ATen operations on the device, the faster
// choice than the fused Triton kernels in every MACE training step measured on an H200. They are the AutogradCUDA
// kernels of the forward operators, so autograd records the ATen operations themselves (exact derivatives at every
// order, nothing recomputed) and torch.compile traces them, and their CUDA kernels (reached without autograd:
// inference mode). The backward operators' AutogradCUDA kernel is the composed reference's vector-Jacobian
// product, differentiable when grad mode is on and the gradient or an input requires grad.

variable_list composed_vjp(const std::function<Tensor(const variable_list&)>& composed, const variable_list& inputs,
                           const Tensor& g) {
    bool graph = at::GradMode::is_enabled() && g.requires_grad();
    for (const auto& t : inputs) graph = graph || (at::GradMode::is_enabled() && t.requires_grad());
    at::AutoGradMode enable(true);
    variable_list xs;
    for (const auto& t : inputs) xs.push_back(graph && t.requires_grad() ? t : t.detach().requires_grad_(true));
    Tensor out = composed(xs);
    variable_list r = torch::autograd::grad({out}, xs, {g}, /*retain_graph=*/graph, /*create_graph=*/graph,
                                            /*allow_unused=*/true);
    for (size_t i = 0; i < r.size(); ++i)
        if (!r[i].defined()) r[i] = at::zeros_like(inputs[i]);
    return r;
}

std::tuple<Tensor, Tensor> grid_product_backward_composed(const Tensor& g, const Tensor& u, const Tensor& v,
                                                          const Tensor& t1, const Tensor& t2, const Tensor& t3) {
    auto r = composed_vjp([&](const variable_list& in) { return grid_product_ref(in[0], in[1], t1, t2, t3); },
                          {u, v}, g);
    return {r[0], r[1]};
}
std::tuple<Tensor, Tensor, Tensor> conv_backward_composed(const Tensor& g, const Tensor& x, const Tensor& sh,
                                                          const Tensor& w, const Tensor& off1, const Tensor& offo,
                                                          const Tensor& d1, const Tensor& d2, const Tensor& d3,
                                                          const Tensor& y1, const Tensor& y2, const Tensor& f,
                                                          int64_t k1, int64_t k2, int64_t dim_out) {
    auto r = composed_vjp([&](const variable_list& in) {
        return conv_ref(in[0], in[1], in[2], off1, offo, d1, d2, d3, y1, y2, f, k1, k2, dim_out);
    }, {x, sh, w}, g);
    return {r[0], r[1], r[2]};
}
std::tuple<Tensor, Tensor, Tensor> message_backward_composed(const Tensor& g, const Tensor& x, const Tensor& sh,
                                                             const Tensor& w, const Tensor& ei, int64_t num_nodes,
                                                             const Tensor& off1, const Tensor& offo, const Tensor& d1,
                                                             const Tensor& d2, const Tensor& d3, const Tensor& y1,
                                                             const Tensor& y2, const Tensor& f, int64_t k1, int64_t k2,
                                                             int64_t dim_out) {
    auto r = composed_vjp([&](const variable_list& in) {
        return message_ref(in[0], in[1], in[2], ei, num_nodes, off1, offo, d1, d2, d3, y1, y2, f, k1, k2, dim_out);
    }, {x, sh, w}, g);
    return {r[0], r[1], r[2]};
}
std::tuple<Tensor, Tensor, Tensor> many_body_backward_composed(const Tensor& g, const Tensor& x, const Tensor& wi,
                                                               const Tensor& wo, const Tensor& offi, const Tensor& offo,
                                                               const Tensor& degi, const Tensor& dego, const Tensor& y,
                                                               const Tensor& fs, int64_t dim_out) {
    auto r = composed_vjp([&](const variable_list& in) {
        return many_body_ref(in[0], in[1], in[2], offi, offo, degi, dego, y, fs, dim_out);
    }, {x, wi, wo}, g);
    return {r[0], r[1], r[2]};
}

}  // namespace

#define GAUNT_CONV_TABLES                                                                                           \
    "Tensor offsets_in1, Tensor offsets_out, Tensor deg1, Tensor deg2, Tensor deg3, Tensor to_grid1, "              \
    "Tensor to_grid2, Tensor from_grid, int k1, int k2, int dim_out"
#define GAUNT_MB_TABLES                                                                                             \
    "Tensor offsets_in, Tensor offsets_out, Tensor deg_in, Tensor deg_out, Tensor to_grid, Tensor from_grids, "     \
    "int dim_out"

TORCH_LIBRARY(gaunt, m) {
    m.def("grid_product(Tensor u, Tensor v, Tensor to_grid1, Tensor to_grid2, Tensor from_grid) -> Tensor");
    m.def("grid_product_backward(Tensor grad, Tensor u, Tensor v, Tensor to_grid1, Tensor to_grid2, "
          "Tensor from_grid) -> (Tensor, Tensor)");
    m.def("conv(Tensor x1, Tensor sh, Tensor weight, " GAUNT_CONV_TABLES ") -> Tensor");
    m.def("conv_backward(Tensor grad, Tensor x1, Tensor sh, Tensor weight, " GAUNT_CONV_TABLES
          ") -> (Tensor, Tensor, Tensor)");
    m.def("message(Tensor x, Tensor sh, Tensor weight, Tensor edge_index, int num_nodes, " GAUNT_CONV_TABLES
          ") -> Tensor");
    m.def("message_backward(Tensor grad, Tensor x, Tensor sh, Tensor weight, Tensor edge_index, int num_nodes, "
          GAUNT_CONV_TABLES ") -> (Tensor, Tensor, Tensor)");
    m.def("many_body(Tensor x, Tensor w_in, Tensor w_out, " GAUNT_MB_TABLES ") -> Tensor");
    m.def("many_body_backward(Tensor grad, Tensor x, Tensor w_in, Tensor w_out, " GAUNT_MB_TABLES
          ") -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gaunt, CPU, m) {
    m.impl("grid_product", grid_product_cpu);
    m.impl("grid_product_backward", grid_product_backward_cpu);
    m.impl("conv", conv_cpu);
    m.impl("conv_backward", conv_backward_cpu);
    m.impl("message", message_cpu);
    m.impl("message_backward", message_backward_cpu);
    m.impl("many_body", many_body_cpu);
    m.impl("many_body_backward", many_body_backward_cpu);
}

TORCH_LIBRARY_IMPL(gaunt, Autograd, m) {
    m.impl("grid_product", grid_product_autograd);
    m.impl("grid_product_backward", grid_product_backward_autograd);
    m.impl("conv", conv_autograd);
    m.impl("conv_backward", conv_backward_autograd);
    m.impl("message", message_autograd);
    m.impl("message_backward", message_backward_autograd);
    m.impl("many_body", many_body_autograd);
    m.impl("many_body_backward", many_body_backward_autograd);
}

TORCH_LIBRARY_IMPL(gaunt, AutogradCUDA, m) {
    m.impl("grid_product", grid_product_ref);
    m.impl("grid_product_backward", grid_product_backward_composed);
    m.impl("conv", conv_ref);
    m.impl("conv_backward", conv_backward_composed);
    m.impl("message", message_ref);
    m.impl("message_backward", message_backward_composed);
    m.impl("many_body", many_body_ref);
    m.impl("many_body_backward", many_body_backward_composed);
}

TORCH_LIBRARY_IMPL(gaunt, CUDA, m) {
    m.impl("grid_product", grid_product_ref);
    m.impl("conv", conv_ref);
    m.impl("message", message_ref);
    m.impl("many_body", many_body_ref);
}
