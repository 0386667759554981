//! Users and groups of an event, ids named from the local files (`users::Names`).

use hids_types::event::{Group, User, UserRef};

/// `user.*`: the real user, the effective one only when it differs (privilege changes
/// show there), and the login user (audit loginuid) when set.
pub fn user<'a>(
    name: impl Fn(u32) -> Option<&'a str>,
    ruid: u32,
    euid: u32,
    login: Option<u32>,
) -> User {
    let named = |id: u32| name(id).map(str::to_owned);
    User {
        id: ruid.to_string(),
        name: named(ruid),
        effective: (euid != ruid).then(|| UserRef {
            id: euid.to_string(),
            name: named(euid),
        }),
        audit: login.map(|id| UserRef {
            id: id.to_string(),
            name: named(id),
        }),
    }
}

/// `group.*`: the real group.
pub fn group(rgid: u32, name: Option<&str>) -> Group {
    Group {
        id: rgid.to_string(),
        name: name.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(id: u32) -> Option<&'static str> {
        match id {
            0 => Some("root"),
            1000 => Some("alice"),
            _ => None,
        }
    }

    #[test]
    fn effective_user_only_when_it_differs() {
        let u = user(names, 1000, 1000, None);
        assert_eq!((u.id.as_str(), u.name.as_deref()), ("1000", Some("alice")));
        assert!(u.effective.is_none() && u.audit.is_none());

        let sudo = user(names, 1000, 0, Some(1000));
        let effective = sudo.effective.unwrap();
        assert_eq!(
            (effective.id.as_str(), effective.name.as_deref()),
            ("0", Some("root"))
        );
        let audit = sudo.audit.unwrap();
        assert_eq!(
            (audit.id.as_str(), audit.name.as_deref()),
            ("1000", Some("alice"))
        );
    }

    #[test]
    fn unnamed_ids_are_kept() {
        let u = user(names, 4242, 4242, Some(4243));
        assert_eq!((u.id.as_str(), u.name), ("4242", None));
        assert_eq!(u.audit.unwrap().id, "4243");
        let g = group(100, None);
        assert_eq!((g.id.as_str(), g.name), ("100", None));
        assert_eq!(group(0, Some("root")).name.as_deref(), Some("root"));
    }
}
