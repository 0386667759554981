//! `hidsctl bootstrap`: etcd roles and users for the HIDS, then authentication on.
//!
//! - role and user `hids-operator`: read and write everything under the prefix.
//! - user `root` (etcd needs it to enable authentication; it also enrolls hosts).
//! - hosts get their own user and role from `hidsctl enroll` (crate::enroll).
//! - only with `--insecure-shared-agent-user`: role and user `hids-agent`, shared by
//!   every host: read `desired/` and `blobs/`, read and write all of `agents/`. etcd
//!   grants by prefix, so any host holding it can delete or forge any other host's
//!   status. Kept for fleets not yet enrolled.

use crate::exit::Exit;

use etcd_client::{Client, Permission};
use hids_control::Keys;

/// The passwords bootstrap sets.
pub struct Passwords {
    pub root: String,
    pub operator: String,
    /// The shared, insecure agent user's; `None`: no such user.
    pub shared_agent: Option<String>,
}

pub async fn run(client: &mut Client, keys: &Keys, passwords: &Passwords) -> anyhow::Result<Exit> {
    let end = |p: &str| hids_control::keys::prefix_end(p);
    let mut roles: Vec<(&str, Vec<Permission>)> = vec![(
        "hids-operator",
        vec![Permission::read_write(keys.prefix()).with_range_end(end(keys.prefix()))],
    )];
    let mut users = vec![
        ("root", passwords.root.as_str(), "root"),
        (
            "hids-operator",
            passwords.operator.as_str(),
            "hids-operator",
        ),
    ];
    if let Some(agent_password) = &passwords.shared_agent {
        roles.push((
            "hids-agent",
            vec![
                Permission::read(keys.desired_dir()).with_range_end(end(&keys.desired_dir())),
                Permission::read(keys.blobs()).with_range_end(end(&keys.blobs())),
                Permission::read_write(keys.agents()).with_range_end(end(&keys.agents())),
            ],
        ));
        users.push(("hids-agent", agent_password.as_str(), "hids-agent"));
    }
    for (role, perms) in roles {
        tolerate_exists(client.role_add(role).await, &format!("role {role}"))?;
        for p in perms {
            client.role_grant_permission(role, p).await?;
        }
        out!("role {role}: ok");
    }
    for (user, password, role) in users {
        tolerate_exists(
            client.user_add(user, password, None).await,
            &format!("user {user}"),
        )?;
        client.user_grant_role(user, role).await?;
        out!("user {user}: ok (role {role})");
    }
    if passwords.shared_agent.is_some() {
        eprintln!(
            "hidsctl: WARNING: user hids-agent can write every host's status key: any host \
             holding it can hide or impersonate others. Enroll hosts (`hidsctl enroll`) and \
             delete it (`etcdctl user delete hids-agent`)."
        );
    }
    client.auth_enable().await?;
    out!(
        "authentication enabled: from now on give --user/--password; give each host its own \
         credentials with `hidsctl --user root --password ... enroll --host-id ID --out DIR`"
    );
    Ok(Exit::Success)
}

/// Re-running bootstrap is fine: existing roles and users are kept.
fn tolerate_exists<T>(r: Result<T, etcd_client::Error>, what: &str) -> anyhow::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("already exists") => {
            out!("{what} exists already");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("{what}: {e}")),
    }
}
