// Type promotion for fused expressions, following PyTorch's rules where PyTorch has them:
//  - categories bool < integer < float; a binary op's result has the higher category;
//  - two floats: the wider (f64 > f32 > f16, bf16 > 8-bit > 4-bit), and bf16 + f16 -> f32;
//    lowbit's narrow formats (PyTorch does not promote them): the one whose values include
//    the other's, else f32;
//  - two integers: the wider of one signedness; signed + unsigned -> the signed type if it
//    is wider, else the next wider signed type (u8 + i8 -> i16). lowbit has no i64, so
//    u32 with a signed type gives i32 (PyTorch: i64);
//  - scalars ("weak", like Python numbers): a scalar of a higher category than the tensor
//    gives that category's default dtype (f32 for float, i32 for int); otherwise the
//    tensor's dtype wins;
//  - bool in arithmetic counts as u8.
#include "jit/jit.hpp"

namespace lowbit::fusion {

bool is_int(Dtype d) {
  switch (d) {
    case Dtype::i32:
    case Dtype::u32:
    case Dtype::i16:
    case Dtype::i8:
    case Dtype::u8:
      return true;
    default:
      return false;
  }
}

bool supported_dtype(Dtype d) { return is_float(d) || is_int(d); }

Num num_of(const Type& t) {
  if (t.weak || t.dtype == Dtype::f64) return Num::f64;
  if (t.boolean) return Num::f32;
  return is_int(t.dtype) ? Num::f64 : Num::f32;
}

double int_min(Dtype d) {
  switch (d) {
    case Dtype::i32:
      return -2147483648.0;
    case Dtype::i16:
      return -32768.0;
    case Dtype::i8:
      return -128.0;
    default:
      return 0.0;
  }
}

double int_max(Dtype d) {
  switch (d) {
    case Dtype::i32:
      return 2147483647.0;
    case Dtype::u32:
      return 4294967295.0;
    case Dtype::i16:
      return 32767.0;
    case Dtype::i8:
      return 127.0;
    case Dtype::u8:
      return 255.0;
    default:
      return 0.0;
  }
}

namespace {

int category(const Type& t) {
  if (t.boolean) return 0;
  return is_float(t.dtype) ? 2 : 1;
}

/// True if every value of `small` is a value of `big` (both float dtypes, NaN aside).
bool contains(Dtype big, Dtype small) {
  if (big == small || big == Dtype::f64) return true;
  if (big == Dtype::f32) return small != Dtype::f64;
  switch (big) {
    case Dtype::f16:
      return small == Dtype::f8e4m3fn || small == Dtype::f8e5m2 || small == Dtype::f4e2m1;
    case Dtype::bf16:
      return small == Dtype::f8e4m3fn || small == Dtype::f8e5m2 || small == Dtype::f4e2m1 ||
             small == Dtype::e8m0;
    case Dtype::f8e4m3fn:
    case Dtype::f8e5m2:
      return small == Dtype::f4e2m1;
    default:
      return false;
  }
}

Dtype promote_float(Dtype a, Dtype b) {
  if (contains(a, b)) return a;
  if (contains(b, a)) return b;
  return Dtype::f32;
}

Dtype promote_int(Dtype a, Dtype b) {
  if (a == b) return a;
  const bool sa = traits(a).is_signed, sb = traits(b).is_signed;
  const int wa = bit_width(a), wb = bit_width(b);
  if (sa == sb) return wa >= wb ? a : b;
  const Dtype s = sa ? a : b, u = sa ? b : a;
  if (bit_width(s) > bit_width(u)) return s;
  if (bit_width(u) == 8) return Dtype::i16;
  return Dtype::i32;  // u16 does not exist; u32 with a signed type: i32 (PyTorch: i64)
}

Type arithmetic(Type t) {
  if (t.boolean) return {Dtype::u8, false, t.weak};
  return t;
}

}  // namespace

Type promote(const Type& a0, const Type& b0) {
  const Type a = arithmetic(a0), b = arithmetic(b0);
  if (a.weak && b.weak) {
    // Scalars fold on the host; the result is a float scalar if either is one.
    const bool fl = is_float(a.dtype) || is_float(b.dtype);
    return {fl ? Dtype::f64 : Dtype::i32, false, true};
  }
  if (a.weak || b.weak) {
    const Type& w = a.weak ? a : b;
    const Type& t = a.weak ? b : a;
    if (category(w) > category(t))
      return {category(w) == 2 ? Dtype::f32 : Dtype::i32, false, false};
    return t;
  }
  const int ca = category(a), cb = category(b);
  if (ca != cb) return ca > cb ? a : b;
  if (ca == 2) return {promote_float(a.dtype, b.dtype), false, false};
  return {promote_int(a.dtype, b.dtype), false, false};
}

Type to_float(const Type& t) {
  if (t.weak) return {Dtype::f64, false, true};
  if (!t.boolean && is_float(t.dtype)) return t;
  return {Dtype::f32, false, false};
}

}  // namespace lowbit::fusion
