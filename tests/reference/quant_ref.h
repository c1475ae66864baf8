// Naive references for the quantizers of quant/ (docs/methods.md, "Uniform fake quantization"-3),
// one element at a time, in double. Where lowbit's kernels are specified to compute in fp32
// (docs/methods.md, "Notation": inv_s = 1.0f / s, x * inv_s rounded to fp32), the reference rounds
// each step to float with a plain cast: double holds the exact product or quotient of two floats
// closely enough (53 >= 2 * 24 + 2 bits) that rounding it to float gives the correctly rounded fp32
// result, so these match fp32 kernels bit for bit. Header-only; includes nothing from lowbit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace lowbit::reference {

inline double f32(double v) { return double(static_cast<float>(v)); }

// Uniform affine fake quantization, docs/methods.md, "Uniform fake quantization", fp32 steps.
inline double fake_quant(double x, double s, double z, double qmin, double qmax) {
  const double inv_s = f32(1.0 / f32(s));
  const double u = std::nearbyint(f32(f32(x) * inv_s)) + z;
  const double q = std::min(std::max(u, qmin), qmax);
  return f32((q - z) * f32(s));
}
// docs/methods.md, "Uniform fake quantization": the STE mask on the rounded, pre-clamp code.
inline double fake_quant_mask(double x, double s, double z, double qmin, double qmax) {
  const double inv_s = f32(1.0 / f32(s));
  const double u = std::nearbyint(f32(f32(x) * inv_s)) + z;
  return (qmin <= u && u <= qmax) ? 1.0 : 0.0;
}

// LSQ / LSQ+ (docs/methods.md, "LSQ" / 3.2) with u = (v - beta) * inv_s in fp32.
struct LsqElem {
  double y;      // forward value
  double dx;     // dx_hat/dx
  double ds;     // dx_hat/ds (before g)
  double dbeta;  // dx_hat/dbeta (before g)
};
inline LsqElem lsq(double v, double s, double beta, double qmin, double qmax, bool has_beta) {
  const double inv_s = f32(1.0 / f32(s));
  const double u = f32(f32(has_beta ? f32(f32(v) - f32(beta)) : f32(v)) * inv_s);
  const double bar = std::min(std::max(std::nearbyint(u), qmin), qmax);
  LsqElem e;
  e.y = has_beta ? f32(f32(bar * f32(s)) + f32(beta)) : f32(bar * f32(s));
  const bool inside = qmin < u && u < qmax;
  e.dx = inside ? 1.0 : 0.0;
  e.ds = u <= qmin ? qmin : (u >= qmax ? qmax : std::nearbyint(u) - u);
  e.dbeta = inside ? 0.0 : 1.0;
  return e;
}

// PACT (docs/methods.md, "PACT") and CG-PACT (8.2), fp32 steps: y_q = round(y * n / a) * a / n.
struct PactElem {
  double y, dx, dalpha;
};
inline PactElem pact(double x, double alpha, int bits, bool calibrated) {
  const double n = double((1 << bits) - 1), a = std::fabs(f32(alpha));
  const double y = std::min(std::max(f32(x), 0.0), a);
  PactElem e;
  e.y = f32(f32(std::nearbyint(f32(f32(y * n) / a)) * a) / n);
  const bool inside = 0.0 <= x && x < a;
  e.dx = inside ? 1.0 : 0.0;
  if (x >= a)
    e.dalpha = 1.0;
  else if (calibrated && inside)
    e.dalpha = (e.y - x) / a;
  else
    e.dalpha = 0.0;
  if (alpha < 0) e.dalpha = -e.dalpha;
  return e;
}

// DoReFa (docs/methods.md, "DoReFa") in double; m = max |tanh w| or mean |w| passed in.
inline double dorefa_weight(double w, double m, int bits, bool modified) {
  const double n = double((1 << bits) - 1), levels = double(1 << bits);
  const double r = std::tanh(w) / (2.0 * m) + 0.5;
  const double q = modified ? std::min(std::floor(r * levels), levels - 1.0) / levels
                            : std::nearbyint(r * n) / n;
  return 2.0 * q - 1.0;
}
inline double dorefa_weight_grad(double w, double m) {
  const double t = std::tanh(w);
  return (1.0 - t * t) / m;
}
inline double dorefa_activation(double x, int bits) {
  const double n = double((1 << bits) - 1);
  return std::nearbyint(std::min(std::max(x, 0.0), 1.0) * n) / n;
}

// DSQ (docs/methods.md, "DSQ") in double: the hard forward and the soft surrogate the backward
// follows.
inline double dsq_hard(double x, double l, double u, int bits) {
  const double n = double((1 << bits) - 1), d = (u - l) / n;
  return l + d * std::nearbyint((std::min(std::max(x, l), u) - l) / d);
}
// l + Delta * soft(y) inside [l, u] with the interval index i given (held constant), l or u
// outside.
inline double dsq_soft(double x, double l, double u, double alpha, int bits, double i) {
  if (x < l) return l;
  if (x > u) return u;
  const double n = double((1 << bits) - 1), d = (u - l) / n;
  const double y = (x - l) / d, t = y - i - 0.5;
  const double kk = std::log(2.0 / alpha - 1.0), sc = 1.0 / (1.0 - alpha);
  return l + d * (i + 0.5 + 0.5 * sc * std::tanh(kk * t));
}
inline double dsq_interval(double x, double l, double u, int bits) {
  const double n = double((1 << bits) - 1), d = (u - l) / n;
  return std::min(std::floor((x - l) / d), n - 1.0);
}

inline double sign(double v) { return v >= 0.0 ? 1.0 : -1.0; }

}  // namespace lowbit::reference
