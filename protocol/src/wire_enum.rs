//! `wire_enum!`: one declaration for an enum that travels as a number and shows as a name.
//!
//! Each such enum needs the same three things: every value (`ALL`, for zero-filled counters and
//! tests), its name (`name`, what JSON, `/stats` and `/metrics` show) and the value for a wire
//! number (`from_repr`). Written by hand they were three lists per enum that had to be kept in
//! step; here each variant is written once, with its number and its name. A declarative macro
//! rather than a derive crate, so the `no_std` driver build gains no proc-macro dependency.

macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $repr:ty {
            $(
                $(#[$variant_meta:meta])*
                $variant:ident = $value:literal => $text:literal,
            )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($repr)]
        $vis enum $name {
            $(
                $(#[$variant_meta])*
                $variant = $value,
            )+
        }

        impl $name {
            /// Every value, in wire order.
            pub const ALL: [$name; [$($value),+].len()] = [$($name::$variant),+];

            /// The name JSON, `/stats` and `/metrics` show.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// This value's position in [`Self::ALL`]: the slot of its counter in an array
            /// indexed by value, which per-event counting uses instead of a map.
            pub const fn index(self) -> usize {
                let mut i = 0;
                while i < Self::ALL.len() {
                    if Self::ALL[i] as $repr == self as $repr {
                        return i;
                    }
                    i += 1;
                }
                // Every value is in `ALL`: the macro builds both from the same list.
                unreachable!()
            }

            /// The value a wire number stands for, if any.
            pub const fn from_repr(value: $repr) -> Option<Self> {
                match value {
                    $($value => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::event::EventKind;
    use crate::message::{LossStage, ProducerKind, RefuseReason};
    use std::collections::BTreeSet;

    /// Every value's number maps back to it, no two share a name, and numbers outside the
    /// list map to nothing.
    macro_rules! check {
        ($name:ty, $repr:ty) => {{
            let mut names = BTreeSet::new();
            for value in <$name>::ALL {
                assert_eq!(<$name>::from_repr(value as $repr), Some(value));
                assert!(names.insert(value.name()), "{} twice", value.name());
                assert_eq!(<$name>::ALL[value.index()], value);
            }
            assert_eq!(<$name>::from_repr(0), None);
            assert_eq!(<$name>::from_repr(<$name>::ALL.len() as $repr + 1), None);
        }};
    }

    #[test]
    fn numbers_and_names_round_trip() {
        check!(EventKind, u16);
        check!(ProducerKind, u8);
        check!(RefuseReason, u8);
        check!(LossStage, u8);
        assert_eq!(EventKind::ImageLoad.name(), "image.load");
        assert_eq!(LossStage::ServerIngest.name(), "server_ingest");
    }
}
