//! Chaining setters for the configuration structs.
//!
//! Configurations are `#[non_exhaustive]` so that a new setting is not a
//! breaking change: outside this crate they start from `Default` (or a
//! constructor) and change what they need, either through the public
//! fields or through the `with_*` methods this macro writes, one per field.

/// Writes `pub fn with_<field>(self, value) -> Self` for each listed field.
macro_rules! with_setters {
    ($ty:ident { $($setter:ident => $field:ident: $value:ty),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("Sets [`", stringify!($ty), "::", stringify!($field), "`].")]
                #[must_use]
                pub fn $setter(mut self, value: $value) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

pub(crate) use with_setters;
