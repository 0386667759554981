//! `hidsctl bootstrap`: etcd roles and users for the HIDS, then authentication on.
//!
//! - role `hids-agent`: read `desired/` and `blobs/`, read and write `agents/`. etcd
//!   permissions are by prefix, so an agent credential could overwrite another agent's
//!   status, but never a desired state: and desired states are signed anyway.
//! - role `hids-operator`: read and write everything under the prefix.
//! - users `hids-agent`, `hids-operator` with those roles, and `root` (etcd needs it to
//!   enable authentication).

use std::process::ExitCode;

use etcd_client::{Client, Permission};
use hids_control::Keys;

pub async fn run(
    client: &mut Client,
    keys: &Keys,
    root_password: &str,
    agent_password: &str,
    operator_password: &str,
) -> anyhow::Result<ExitCode> {
    let end = |p: &str| hids_control::keys::prefix_end(p);
    let roles: [(&str, Vec<Permission>); 2] = [
        (
            "hids-agent",
            vec![
                Permission::read(keys.desired_dir()).with_range_end(end(&keys.desired_dir())),
                Permission::read(keys.blobs()).with_range_end(end(&keys.blobs())),
                Permission::read_write(keys.agents()).with_range_end(end(&keys.agents())),
            ],
        ),
        (
            "hids-operator",
            vec![Permission::read_write(keys.prefix()).with_range_end(end(keys.prefix()))],
        ),
    ];
    for (role, perms) in roles {
        tolerate_exists(client.role_add(role).await, &format!("role {role}"))?;
        for p in perms {
            client.role_grant_permission(role, p).await?;
        }
        out!("role {role}: ok");
    }
    for (user, password, role) in [
        ("root", root_password, "root"),
        ("hids-agent", agent_password, "hids-agent"),
        ("hids-operator", operator_password, "hids-operator"),
    ] {
        tolerate_exists(
            client.user_add(user, password, None).await,
            &format!("user {user}"),
        )?;
        client.user_grant_role(user, role).await?;
        out!("user {user}: ok (role {role})");
    }
    client.auth_enable().await?;
    out!("authentication enabled: from now on give --user/--password (agents: control.user/password)");
    Ok(ExitCode::SUCCESS)
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
