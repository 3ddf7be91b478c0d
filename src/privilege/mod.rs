//! Who a run acts as: the capabilities it needs and gives up (`capabilities`),
//! the user `--user` names (`identity`), and the delegated cgroup an
//! ordinary user's runs move into (`user_scope`).

pub(crate) mod capabilities;
pub(crate) mod identity;
pub(crate) mod user_scope;
