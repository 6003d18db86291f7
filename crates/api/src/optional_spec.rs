//! Specs that upstream marks optional at the root of the object.
//!
//! kube's derive makes the root `spec` field mandatory for deserialization. Upstream,
//! ServiceExport, ServiceImport, Work and ClusterProperty may omit `spec` entirely (the
//! canonical ServiceExport has none). A spec type declared through [`optional_spec!`] reads a
//! missing or null `spec` as its `Default`, because serde asks a missing field's type to
//! deserialize through `deserialize_option`, which answers `None`.

/// Declares a spec struct whose absence deserializes as `Default::default()`.
///
/// Attributes before `@shared` (the `CustomResource` derive and `#[kube]`) go on the public
/// type only; those after it (docs, `#[serde]`) also shape the private deserialization twin.
macro_rules! optional_spec {
    (
        $(#[$outer:meta])*
        @shared
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        #[derive(::serde::Serialize, ::schemars::JsonSchema, Default)]
        $(#[$outer])*
        $(#[$meta])*
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty ),*
        }

        const _: () = {
            #[derive(::serde::Deserialize, ::schemars::JsonSchema)]
            $(#[$meta])*
            struct Present {
                $( $(#[$field_meta])* $field: $ty ),*
            }

            impl<'de> ::serde::Deserialize<'de> for $name {
                fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    Ok(Option::<Present>::deserialize(deserializer)?
                        .map(|present| $name { $( $field: present.$field ),* })
                        .unwrap_or_default())
                }
            }
        };
    };
}

pub(crate) use optional_spec;
