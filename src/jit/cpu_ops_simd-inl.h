// Every vectorised op of the CPU fusion kernel once, as an X-macro over Highway vectors:
// CASE(op, operands, value of x, y, z). Shared by the interpreter's vector steps
// (cpu_eval_simd.cpp) and by the kernels the CPU JIT generates (codegen_cpu.cpp gives the
// compiler this file's text), so both compute every op with the same operations in the
// same order: the same bits. Expanded inside lowbit::HWY_NAMESPACE::fusion_simd, after
// cpu_math_simd-inl.h (F, lb_min, lb_exp, ...). cast is apart (its dtype picks the
// formula). No include guard: Highway's foreach_target includes its users once per target.
#undef LB_FOR_EACH_OP
#define LB_FOR_EACH_OP(CASE)                                                                  \
  CASE(add, 2, x + y)                                                                         \
  CASE(sub, 2, x - y)                                                                         \
  CASE(mul, 2, x* y)                                                                          \
  CASE(div, 2, x / y)                                                                         \
  CASE(minimum, 2, lb_min(x, y))                                                              \
  CASE(maximum, 2, lb_max(x, y))                                                              \
  CASE(leaky_relu, 2, hn::IfThenElse(x > F(0.0f), x, x * y))                                  \
  CASE(lt, 2, hn::IfThenElseZero(x < y, F(1.0f)))                                             \
  CASE(le, 2, hn::IfThenElseZero(x <= y, F(1.0f)))                                            \
  CASE(gt, 2, hn::IfThenElseZero(x > y, F(1.0f)))                                             \
  CASE(ge, 2, hn::IfThenElseZero(x >= y, F(1.0f)))                                            \
  CASE(eq, 2, hn::IfThenElseZero(x == y, F(1.0f)))                                            \
  CASE(ne, 2, hn::IfThenZeroElse(x == y, F(1.0f)))                                            \
  CASE(clamp, 3, lb_min(lb_max(x, y), z))                                                     \
  CASE(where, 3, hn::IfThenElse(x == F(0.0f), z, y))                                          \
  CASE(neg, 1, hn::Neg(x))                                                                    \
  CASE(abs, 1, hn::Abs(x))                                                                    \
  CASE(relu, 1, hn::IfThenZeroElse(x <= F(0.0f), x))                                          \
  CASE(sqrt, 1, hn::Sqrt(x))                                                                  \
  CASE(rsqrt, 1, F(1.0f) / hn::Sqrt(x))                                                       \
  CASE(exp, 1, lb_exp(x))                                                                     \
  CASE(log, 1, lb_log(x))                                                                     \
  CASE(tanh, 1, lb_tanh(x))                                                                   \
  CASE(sigmoid, 1, F(1.0f) / lb_exp_n1p_neg(x))                                               \
  CASE(silu, 1, x / lb_exp_n1p_neg(x))                                                        \
  CASE(softplus, 1, hn::IfThenElse(x > F(20.0f), x, lb_log1p_pos(lb_exp(x))))                 \
  CASE(gelu, 1,                                                                               \
       (x * F(0.5f)) * (F(1.0f) + lb_erf(x * F(static_cast<float>(0.70710678118654752440))))) \
  CASE(gelu_tanh, 1,                                                                          \
       (F(0.5f) * x) * (F(1.0f) + lb_tanh(F(static_cast<float>(0.79788456080286535588)) *     \
                                          (x + F(static_cast<float>(0.044715)) * ((x * x) * x)))))
