//! Typed calls: the signature is checked once, at lookup, against Rust types
//! (wasmtime's `TypedFunc` idea), and each call then goes straight to WAMR
//! without `Val` boxing or allocation.
//!
//! ```no_run
//! # use wamr_coro::*;
//! # let module = Module::from_wat("(module)")?;
//! let mut env = ExecEnv::new(&module, InstanceConfig::default())?;
//! let add = env.typed::<(i64, i64), i64>(&module, "add64")?;
//! assert_eq!(env.call_typed(&add, (2, 3))?, 5);
//! # Ok::<(), wamr_coro::Error>(())
//! ```
use std::marker::PhantomData;

use super::exec_env::ExecEnv;
use super::func::Func;
use super::module::{FuncType, Module, ValType};
use crate::error::{Error, Result};

/// A Rust type that is a WebAssembly value type.
pub trait WasmTy: Copy + Send + 'static {
    /// Its WebAssembly type.
    const TY: ValType;
    /// Writes it into WAMR's argv cells; returns the cells used.
    fn store(self, cells: &mut [u32]) -> usize;
    /// Reads it from WAMR's argv cells.
    fn load(cells: &[u32]) -> Self;
}

macro_rules! wasm_ty32 {
    ($t:ty, $vt:expr, $to:expr, $from:expr) => {
        impl WasmTy for $t {
            const TY: ValType = $vt;
            fn store(self, cells: &mut [u32]) -> usize {
                cells[0] = $to(self);
                1
            }
            fn load(cells: &[u32]) -> Self {
                $from(cells[0])
            }
        }
    };
}
macro_rules! wasm_ty64 {
    ($t:ty, $vt:expr, $to:expr, $from:expr) => {
        impl WasmTy for $t {
            const TY: ValType = $vt;
            fn store(self, cells: &mut [u32]) -> usize {
                let v: u64 = $to(self);
                cells[0] = v as u32;
                cells[1] = (v >> 32) as u32;
                2
            }
            fn load(cells: &[u32]) -> Self {
                $from(cells[0] as u64 | ((cells[1] as u64) << 32))
            }
        }
    };
}
wasm_ty32!(i32, ValType::I32, |v: i32| v as u32, |c: u32| c as i32);
wasm_ty32!(u32, ValType::I32, |v: u32| v, |c: u32| c);
wasm_ty32!(f32, ValType::F32, f32::to_bits, f32::from_bits);
wasm_ty64!(i64, ValType::I64, |v: i64| v as u64, |c: u64| c as i64);
wasm_ty64!(u64, ValType::I64, |v: u64| v, |c: u64| c);
wasm_ty64!(f64, ValType::F64, f64::to_bits, f64::from_bits);

/// Parameter lists: `()`, a single value, or tuples of up to 6 values.
pub trait WasmParams: Send + 'static {
    /// The parameter types.
    fn types() -> Vec<ValType>;
    /// Writes the values into cells; returns the cells used.
    fn store(self, cells: &mut [u32]) -> usize;
}

/// Results: `()` or a single value.
pub trait WasmResults: Send + 'static {
    /// The result types.
    fn types() -> Vec<ValType>;
    /// Reads the results from cells.
    fn load(cells: &[u32]) -> Self;
}

impl WasmParams for () {
    fn types() -> Vec<ValType> {
        Vec::new()
    }
    fn store(self, _: &mut [u32]) -> usize {
        0
    }
}

impl<T: WasmTy> WasmParams for T {
    fn types() -> Vec<ValType> {
        vec![T::TY]
    }
    fn store(self, cells: &mut [u32]) -> usize {
        WasmTy::store(self, cells)
    }
}

macro_rules! params_tuple {
    ($($n:ident),+) => {
        impl<$($n: WasmTy),+> WasmParams for ($($n,)+) {
            fn types() -> Vec<ValType> {
                vec![$($n::TY),+]
            }
            #[allow(non_snake_case)]
            fn store(self, cells: &mut [u32]) -> usize {
                let ($($n,)+) = self;
                let mut at = 0;
                $( at += $n.store(&mut cells[at..]); )+
                at
            }
        }
    };
}
params_tuple!(A);
params_tuple!(A, B);
params_tuple!(A, B, C);
params_tuple!(A, B, C, D);
params_tuple!(A, B, C, D, E);
params_tuple!(A, B, C, D, E, F);

impl WasmResults for () {
    fn types() -> Vec<ValType> {
        Vec::new()
    }
    fn load(_: &[u32]) -> Self {}
}

impl<T: WasmTy> WasmResults for T {
    fn types() -> Vec<ValType> {
        vec![T::TY]
    }
    fn load(cells: &[u32]) -> Self {
        WasmTy::load(cells)
    }
}

/// An exported function whose signature matched `P -> R` at lookup.
#[derive(Debug, Clone)]
pub struct TypedFunc<P, R> {
    func: Func,
    _sig: PhantomData<fn(P) -> R>,
}

impl<P, R> TypedFunc<P, R> {
    /// The untyped function.
    pub fn func(&self) -> &Func {
        &self.func
    }
}

/// Most cells a typed call uses (6 parameters of 2 cells).
const MAX_CELLS: usize = 12;

impl ExecEnv {
    /// Looks up exported function `name` and checks it is `P -> R`.
    pub fn typed<P: WasmParams, R: WasmResults>(&self, module: &Module, name: &str) -> Result<TypedFunc<P, R>> {
        let func = self.func(module, name)?;
        let want = FuncType { params: P::types(), results: R::types() };
        if func.ty() != &want {
            return Err(Error::WrongSignature {
                name: name.into(),
                expected: want.to_string(),
                found: func.ty().to_string(),
            });
        }
        Ok(TypedFunc { func, _sig: PhantomData })
    }

    /// Calls a typed function: no type checks, no allocation.
    pub fn call_typed<P: WasmParams, R: WasmResults>(&mut self, f: &TypedFunc<P, R>, args: P) -> Result<R> {
        // The cells and the result are written on the stack the call runs
        // on: on the worker's call stack they stay off the coroutine's cold
        // lines too.
        self.on_call_stack(|env| {
            let mut cells = [0u32; MAX_CELLS];
            let argc = args.store(&mut cells);
            env.call_cells(&f.func, argc as u32, &mut cells)?;
            Ok(R::load(&cells))
        })
    }
}
