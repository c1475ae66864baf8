// A one-off experiment, not part of the build: times oneDNN's f32 convolutions
// on the shapes of ResNet-20 at 28x28, batch 128 (NHWC activations, weights in
// the layout oneDNN picks, as layers/conv2d.cpp creates them), forward
// training, backward data and backward weights, against whichever oneDNN it is
// compiled with. Session 6 used it to ask whether a newer oneDNN (3.2, from
// PyPI's onednn-cpu-gomp wheel) would run these convolutions faster than Debian
// 12's 2.6 (docs/benchmarks.md, "What bounds the CPU fp32 ratio"):
//
//   g++ -O2 -std=c++17 onednn_conv_versions.cpp -o convb26 -ldnnl            #
//   Debian's 2.6 pip download --no-deps onednn-cpu-gomp==2023.2.0
//   onednn-devel-cpu-gomp==2023.2.0 -d w (cd w && for f in *.whl; do python3 -m
//   zipfile -e $f .; done) D=w/onednn_devel_cpu_gomp-2023.2.0.data/data;
//   L=w/onednn_cpu_gomp-2023.2.0.data/data/lib g++ -O2 -std=c++17
//   onednn_conv_versions.cpp -o convb32 -I$D/include -L$L -Wl,-rpath,$L -ldnnl
//   OMP_NUM_THREADS=2 ./convb26; OMP_NUM_THREADS=2 ./convb32
//
// Session 7 compiled it with -DLOWBIT_ALG=convolution_winograd
// -DLOWBIT_ACT_TAG=any (oneDNN picks blocked activation layouts, no reorder
// timed) and -DLOWBIT_ACT_TAG=any alone (direct in the blocked layout); a
// convolution without an implementation prints oneDNN's error and the next one
// runs.
#ifndef LOWBIT_ALG
#define LOWBIT_ALG convolution_direct
#endif
#ifndef LOWBIT_ACT_TAG
#define LOWBIT_ACT_TAG nhwc
#endif
#include <chrono>
#include <cstdio>
#include <oneapi/dnnl/dnnl.hpp>
#include <vector>
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;
static engine eng(engine::kind::cpu, 0);
static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
template <class F>
double timeit(F f, int reps) {
  f();
  f();
  double t0 = now();
  for (int i = 0; i < reps; ++i) f();
  return (now() - t0) / reps * 1e3;
}
void run_one(int n, int c, int k, int h, int stride, int r) {
  int pad = r / 2;
  int p = (h + 2 * pad - r) / stride + 1;
  memory::desc src({n, c, h, h}, dt::f32, tag::LOWBIT_ACT_TAG),
      dst({n, k, p, p}, dt::f32, tag::LOWBIT_ACT_TAG);
  memory::desc wany({k, c, r, r}, dt::f32, tag::any), bias;
  memory::dims st{stride, stride}, dl{0, 0}, pl{pad, pad},
      pr{(p - 1) * stride + r - h - pad, (p - 1) * stride + r - h - pad};
  stream s(eng);
#if DNNL_VERSION_MAJOR >= 3
  convolution_forward::primitive_desc fpd(eng, prop_kind::forward_training, algorithm::LOWBIT_ALG,
                                          src, wany, dst, st, dl, pl, pr);
  convolution_backward_data::primitive_desc dpd(eng, algorithm::LOWBIT_ALG, src, wany, dst, st, dl,
                                                pl, pr, fpd);
  convolution_backward_weights::primitive_desc wpd(eng, algorithm::LOWBIT_ALG, src, wany, dst, st,
                                                   dl, pl, pr, fpd);
#else
  convolution_forward::desc fd(prop_kind::forward_training, algorithm::LOWBIT_ALG, src, wany, dst,
                               st, dl, pl, pr);
  convolution_forward::primitive_desc fpd(fd, eng);
  convolution_backward_data::desc dd(algorithm::LOWBIT_ALG, src, wany, dst, st, dl, pl, pr);
  convolution_backward_data::primitive_desc dpd(dd, eng, fpd);
  convolution_backward_weights::desc wd(algorithm::LOWBIT_ALG, src, wany, dst, st, dl, pl, pr);
  convolution_backward_weights::primitive_desc wpd(wd, eng, fpd);
#endif
  memory msrc(fpd.src_desc(), eng), mdst(fpd.dst_desc(), eng), mw(fpd.weights_desc(), eng);
  memory mdw(wpd.diff_weights_desc(), eng), mds(dpd.diff_src_desc(), eng),
      mdd(dpd.diff_dst_desc(), eng);
  for (auto *m : {&msrc, &mdst, &mw, &mdw, &mds, &mdd}) {
    float *p = (float *)m->get_data_handle();
    size_t cnt = m->get_desc().get_size() / 4;
    for (size_t i = 0; i < cnt; ++i) p[i] = (i % 7) * 0.1f - 0.3f;
  }
  convolution_forward f(fpd);
  convolution_backward_data bd(dpd);
  convolution_backward_weights bw(wpd);
  double tf = timeit(
      [&] {
        f.execute(s, {{DNNL_ARG_SRC, msrc}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, mdst}});
        s.wait();
      },
      20);
  double tb = timeit(
      [&] {
        bd.execute(s, {{DNNL_ARG_DIFF_DST, mdd}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DIFF_SRC, mds}});
        s.wait();
      },
      20);
  double tw = timeit(
      [&] {
        bw.execute(s,
                   {{DNNL_ARG_SRC, msrc}, {DNNL_ARG_DIFF_DST, mdd}, {DNNL_ARG_DIFF_WEIGHTS, mdw}});
        s.wait();
      },
      20);
  std::printf(
      "%3d->%3d %2dx%2d s%d r%d  fwd %7.3f ms  bwd_d %7.3f ms  bwd_w "
      "%7.3f ms | %s | %s | %s\n",
      c, k, h, h, stride, r, tf, tb, tw, fpd.impl_info_str(), dpd.impl_info_str(),
      wpd.impl_info_str());
}
void run(int n, int c, int k, int h, int stride, int r) {
  try {
    run_one(n, c, k, h, stride, r);
  } catch (const dnnl::error &e) {
    std::printf("%3d->%3d %2dx%2d s%d r%d  %s\n", c, k, h, h, stride, r, e.what());
  }
}
int main() {  // the distinct convolutions of ResNet-20 (28x28x1 input, option A
              // shortcuts)
  int n = 128;
  run(n, 1, 16, 28, 1, 3);
  run(n, 16, 16, 28, 1, 3);
  run(n, 16, 32, 28, 2, 3);
  run(n, 32, 32, 14, 1, 3);
  run(n, 32, 64, 14, 2, 3);
  run(n, 64, 64, 7, 1, 3);
}
