//! Roles a token may carry, as a small set.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Dashboard,
    Publisher,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::User, Role::Dashboard, Role::Publisher, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Dashboard => "dashboard",
            Role::Publisher => "publisher",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    /// Unknown role names are ignored, as the contract says.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Roles(
            names
                .into_iter()
                .filter_map(Role::parse)
                .fold(0, |acc, r| acc | (1 << r as u8)),
        )
    }

    pub fn contains(self, r: Role) -> bool {
        self.0 & (1 << r as u8) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl From<Role> for Roles {
    fn from(r: Role) -> Self {
        Roles(1 << r as u8)
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Role::ALL
            .into_iter()
            .filter(|r| self.contains(*r))
            .map(Role::as_str)
            .collect();
        f.write_str(&names.join(","))
    }
}
