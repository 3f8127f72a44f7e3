// AntisymmetricRNN (Eq. 12 and the gated Eq. 13): the whole sequence forward and the whole backward in one call
// each, the same equations as rnnrepro.cells.antisymmetric.AntisymSequence (its docstring derives the backward).
// The batch is split across threads; each thread runs all T steps on its own rows, so the recurrent product is one
// single-threaded GEMM per step on contiguous row blocks and the element-wise work of a step is one pass over them.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <vector>

namespace {

// Rows [b0, b1) of a (B, n) slice: contiguous, since rows are the outer dimension.
inline at::Tensor rows(const at::Tensor& x, int64_t b0, int64_t b1) { return x.narrow(0, b0, b1 - b0); }

// Runs body(b0, b1) on the row blocks [b0, b1), one block per thread, in parallel.
template <typename F>
void for_each_row_block(int64_t B, const F& body) {
  const int64_t rows_per = std::max<int64_t>(1, (B + at::get_num_threads() - 1) / at::get_num_threads());
  const int64_t blocks = (B + rows_per - 1) / rows_per;
  at::parallel_for(0, blocks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) body(c * rows_per, std::min(B, (c + 1) * rows_per));
  });
}

}  // namespace

// gx (T, B, n) or gated (T, B, 2n) = [g_h, g_z]; mt = M^T (n, n); h0 (B, n).
// Returns hs (T+1, B, n), cs (T, B, n) = tanh(.) and, gated, zs (T, B, n) = sigmoid(.) (else an empty tensor).
std::vector<at::Tensor> antisym_forward(const at::Tensor& gx, const at::Tensor& mt, const at::Tensor& h0,
                                        double eps, bool gated) {
  TORCH_CHECK(gx.dim() == 3 && gx.is_contiguous() && mt.is_contiguous() && h0.is_contiguous(),
              "antisym_forward: contiguous gx (T, B, n[*2]), mt (n, n), h0 (B, n) expected");
  const int64_t T = gx.size(0), B = gx.size(1), n = h0.size(1);
  auto hs = at::empty({T + 1, B, n}, gx.options());
  auto cs = at::empty({T, B, n}, gx.options());
  auto zs = gated ? at::empty({T, B, n}, gx.options()) : at::empty({0}, gx.options());
  hs[0].copy_(h0);
  for_each_row_block(B, [&](int64_t b0, int64_t b1) {
    AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "antisym_forward", [&] {
      const scalar_t e = static_cast<scalar_t>(eps);
      const int64_t len = (b1 - b0) * n;
      // tanh(a) = 2 sigmoid(2a) - 1: ATen's float tanh goes through MKL's VML, which is several times slower than
      // its sigmoid on some CPUs (AMD EPYC here: results/bench); the identity costs ~1 ulp of absolute error.
      at::Tensor pre = at::empty({b1 - b0, gated ? 2 * n : n}, gx.options());
      scalar_t* pp = pre.data_ptr<scalar_t>();
      at::Tensor shared = gated ? at::empty({b1 - b0, n}, gx.options()) : at::Tensor();
      for (int64_t t = 0; t < T; ++t) {
        at::Tensor h = rows(hs[t], b0, b1);
        const scalar_t* hp = h.data_ptr<scalar_t>();
        const scalar_t* g = rows(gx[t], b0, b1).data_ptr<scalar_t>();
        scalar_t* cp = rows(cs[t], b0, b1).data_ptr<scalar_t>();
        scalar_t* out = rows(hs[t + 1], b0, b1).data_ptr<scalar_t>();
        if (!gated) {
          at::addmm_out(pre, rows(gx[t], b0, b1), h, mt, 2.0, 2.0);  // 2 (g + h Mt)
          pre.sigmoid_();
          for (int64_t k = 0; k < len; ++k) {
            cp[k] = scalar_t(2) * pp[k] - scalar_t(1);
            out[k] = hp[k] + e * cp[k];
          }
        } else {
          // pre = [2 (h Mt + g_h), h Mt + g_z] per row: one product, one sigmoid over both halves
          at::mm_out(shared, h, mt);
          const scalar_t* sp = shared.data_ptr<scalar_t>();
          for (int64_t r = 0; r < b1 - b0; ++r)
            for (int64_t j = 0; j < n; ++j) {
              const scalar_t s = sp[r * n + j];
              pp[r * 2 * n + j] = scalar_t(2) * (s + g[r * 2 * n + j]);
              pp[r * 2 * n + n + j] = s + g[r * 2 * n + n + j];
            }
          pre.sigmoid_();
          scalar_t* zp = rows(zs[t], b0, b1).data_ptr<scalar_t>();
          for (int64_t r = 0; r < b1 - b0; ++r)
            for (int64_t j = 0; j < n; ++j) {
              const int64_t k = r * n + j;
              cp[k] = scalar_t(2) * pp[r * 2 * n + j] - scalar_t(1);
              zp[k] = pp[r * 2 * n + n + j];
              out[k] = hp[k] + e * zp[k] * cp[k];
            }
        }
      }
    });
  });
  return {hs, cs, zs};
}

// The backward of antisym_forward. g_h (B, n) is the gradient of h_T, g_seq (T, B, n) that of h_1..h_T (either may be
// an empty tensor). Returns d_gx, d_mt (empty when not needed) and d_h0.
std::vector<at::Tensor> antisym_backward(const at::Tensor& g_seq, const at::Tensor& g_h, const at::Tensor& mt,
                                         const at::Tensor& hs, const at::Tensor& cs, const at::Tensor& zs,
                                         double eps, bool gated, bool need_d_mt) {
  const int64_t T = cs.size(0), B = cs.size(1), n = cs.size(2);
  const bool has_seq = g_seq.numel() > 0, has_h = g_h.numel() > 0;
  auto d_gx = at::empty({T, B, gated ? 2 * n : n}, cs.options());
  auto p_sum = gated ? at::empty({T, B, n}, cs.options()) : d_gx;  // the adjoint of h Mt
  auto mu = has_h ? (g_h * eps).contiguous() : at::zeros({B, n}, cs.options());
  const auto back = mt.t().contiguous();
  for_each_row_block(B, [&](int64_t b0, int64_t b1) {
    AT_DISPATCH_FLOATING_TYPES(cs.scalar_type(), "antisym_backward", [&] {
      const scalar_t e = static_cast<scalar_t>(eps);
      const int64_t nr = b1 - b0, len = nr * n;
      at::Tensor m = rows(mu, b0, b1);
      scalar_t* mp = m.data_ptr<scalar_t>();
      if (has_seq) {
        const scalar_t* gs = rows(g_seq[T - 1], b0, b1).data_ptr<scalar_t>();
        for (int64_t k = 0; k < len; ++k) mp[k] += e * gs[k];
      }
      for (int64_t t = T - 1; t >= 0; --t) {
        const scalar_t* c = rows(cs[t], b0, b1).data_ptr<scalar_t>();
        at::Tensor p = rows(p_sum[t], b0, b1);
        scalar_t* pp = p.data_ptr<scalar_t>();
        if (!gated) {
          for (int64_t k = 0; k < len; ++k) pp[k] = mp[k] * (scalar_t(1) - c[k] * c[k]);  // mu (1 - c^2)
        } else {
          const scalar_t* z = rows(zs[t], b0, b1).data_ptr<scalar_t>();
          scalar_t* d = rows(d_gx[t], b0, b1).data_ptr<scalar_t>();  // rows of [P_h, P_z], 2n wide
          for (int64_t r = 0; r < nr; ++r)
            for (int64_t j = 0; j < n; ++j) {
              const int64_t k = r * n + j;
              const scalar_t mz = mp[k] * z[k], mzc = mz * c[k];
              const scalar_t ph = mz - mzc * c[k];   // mu z (1 - c^2)
              const scalar_t pz = mzc - mzc * z[k];  // mu c z (1 - z)
              d[r * 2 * n + j] = ph;
              d[r * 2 * n + n + j] = pz;
              pp[k] = ph + pz;
            }
        }
        m.addmm_(p, back, 1.0, eps);
        if (has_seq && t > 0) {
          const scalar_t* gs = rows(g_seq[t - 1], b0, b1).data_ptr<scalar_t>();
          for (int64_t k = 0; k < len; ++k) mp[k] += e * gs[k];
        }
      }
    });
  });
  // dMt = sum_t h_t^T P_t: one (n x TB) @ (TB x n) product, faster than T small ones per thread (measured)
  at::Tensor d_mt = need_d_mt ? at::mm(hs.narrow(0, 0, T).reshape({T * B, n}).t(), p_sum.view({T * B, n}))
                              : at::empty({0}, cs.options());
  return {d_gx, d_mt, mu.div_(eps)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("antisym_forward", &antisym_forward, "AntisymmetricRNN whole-sequence forward");
  m.def("antisym_backward", &antisym_backward, "AntisymmetricRNN whole-sequence backward");
}
