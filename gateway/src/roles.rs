//! Roles and the permissions they grant. The table is documented in `docs/roles.md`.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use carnet_kit::Permission;
use carnet_kit::Permission::*;

/// A role a key or a token carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Owner,
    Admin,
    PrivacyOfficer,
    Sales,
    Marketing,
    ReadOnly,
}

impl Role {
    pub const ALL: [Role; 6] =
        [Role::Owner, Role::Admin, Role::PrivacyOfficer, Role::Sales, Role::Marketing, Role::ReadOnly];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::PrivacyOfficer => "privacy_officer",
            Role::Sales => "sales",
            Role::Marketing => "marketing",
            Role::ReadOnly => "read_only",
        }
    }

    /// Returns the permissions the role grants.
    pub fn permissions(self) -> &'static [Permission] {
        match self {
            Role::Owner => &Permission::ALL,
            Role::Admin => &[
                ContactsRead,
                ContactsWrite,
                ContactsDelete,
                ContactsExport,
                PolicyManage,
                ConsentManage,
                CommsSend,
                EnrichmentAdmin,
                AuditRead,
                KeysManage,
            ],
            Role::PrivacyOfficer => &[
                ContactsRead,
                ContactsWrite,
                ContactsDelete,
                ContactsExport,
                PolicyManage,
                ConsentManage,
                DsarManage,
                AuditRead,
            ],
            Role::Sales => &[ContactsRead, ContactsWrite, CommsSend],
            Role::Marketing => &[ContactsRead, ConsentManage, CommsSend],
            Role::ReadOnly => &[ContactsRead],
        }
    }

    /// Returns the union of the permissions of `roles`.
    pub fn union(roles: &[Role]) -> BTreeSet<Permission> {
        roles.iter().flat_map(|r| r.permissions().iter().copied()).collect()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            let valid: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
            format!("unknown role `{s}`, expected one of: {}", valid.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_export_and_delete_are_separate_from_edit() {
        let sales = Role::union(&[Role::Sales]);
        assert!(sales.contains(&ContactsRead) && sales.contains(&ContactsWrite));
        assert!(!sales.contains(&ContactsExport) && !sales.contains(&ContactsDelete));
    }

    #[test]
    fn test_read_only_changes_nothing() {
        assert_eq!(Role::ReadOnly.permissions(), &[ContactsRead]);
    }

    #[test]
    fn test_only_owner_and_admin_manage_keys() {
        for role in Role::ALL {
            let manages = role.permissions().contains(&KeysManage);
            assert_eq!(manages, matches!(role, Role::Owner | Role::Admin), "{role}");
        }
    }

    #[test]
    fn test_role_parse_lists_valid_values() {
        assert_eq!("privacy_officer".parse::<Role>().unwrap(), Role::PrivacyOfficer);
        let err = "root".parse::<Role>().unwrap_err();
        assert!(err.contains("root") && err.contains("read_only"));
    }
}
