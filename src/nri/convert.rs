//! Wire types ↔ our model: the only place that looks inside NRI messages.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::model::{
    Adjustment, Container, ContainerState, EventKind, Mount, Namespace, Pod, ProcessSpec,
    RuntimeSeccomp, SeccompArg, SeccompProfile, SeccompSyscall,
};
use crate::nri::wire::api;

fn sorted(map: HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

fn namespaces(list: Vec<api::LinuxNamespace>) -> Vec<Namespace> {
    list.into_iter()
        .map(|ns| Namespace {
            kind: ns.type_,
            path: ns.path,
        })
        .collect()
}

fn mount_from_wire(m: api::Mount) -> Mount {
    Mount {
        destination: m.destination,
        kind: m.type_,
        source: m.source,
        options: m.options,
    }
}

fn mount_to_wire(m: Mount) -> api::Mount {
    api::Mount {
        destination: m.destination,
        type_: m.kind,
        source: m.source,
        options: m.options,
        ..Default::default()
    }
}

/// A wire pod as our [`Pod`]. Unparsable IPs are skipped (and logged).
pub fn pod(wire: api::PodSandbox) -> Pod {
    let ips = wire
        .ips
        .iter()
        .filter_map(|ip| match ip.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                tracing::debug!(pod = %wire.id, ip = %ip, "ignoring unparsable pod ip");
                None
            }
        })
        .collect();
    let (ns, cgroup_parent) = match wire.linux.into_option() {
        Some(linux) => (namespaces(linux.namespaces), linux.cgroup_parent),
        None => (Vec::new(), String::new()),
    };
    Pod {
        id: wire.id,
        name: wire.name,
        uid: wire.uid,
        namespace: wire.namespace,
        labels: sorted(wire.labels),
        annotations: sorted(wire.annotations),
        ips,
        namespaces: ns,
        pid: wire.pid,
        cgroup_parent,
    }
}

fn state(wire: protobuf::EnumOrUnknown<api::ContainerState>) -> ContainerState {
    match wire.enum_value() {
        Ok(api::ContainerState::CONTAINER_CREATED) => ContainerState::Created,
        Ok(api::ContainerState::CONTAINER_PAUSED) => ContainerState::Paused,
        Ok(api::ContainerState::CONTAINER_RUNNING) => ContainerState::Running,
        Ok(api::ContainerState::CONTAINER_STOPPED) => ContainerState::Stopped,
        Ok(api::ContainerState::CONTAINER_UNKNOWN) | Err(_) => ContainerState::Unknown,
    }
}

/// A wire container as our [`Container`]. The wire has no cwd, capabilities or
/// no_new_privileges: those stay at their defaults.
pub fn container(wire: api::Container) -> Container {
    let (uid, gid, additional_gids) = match wire.user.into_option() {
        Some(user) => (Some(user.uid), Some(user.gid), user.additional_gids),
        None => (None, None, Vec::new()),
    };
    let (ns, cgroups_path, oom_score_adj, seccomp) = match wire.linux.into_option() {
        Some(linux) => (
            namespaces(linux.namespaces),
            linux.cgroups_path,
            linux.oom_score_adj.into_option().map(|o| o.value),
            runtime_seccomp(linux.seccomp_profile, linux.seccomp_policy),
        ),
        None => (Vec::new(), String::new(), None, RuntimeSeccomp::Unknown),
    };
    Container {
        id: wire.id,
        pod_id: wire.pod_sandbox_id,
        name: wire.name,
        state: state(wire.state),
        labels: sorted(wire.labels),
        annotations: sorted(wire.annotations),
        mounts: wire.mounts.into_iter().map(mount_from_wire).collect(),
        process: ProcessSpec {
            args: wire.args,
            env: wire.env,
            uid,
            gid,
            additional_gids,
            oom_score_adj,
            seccomp,
            ..Default::default()
        },
        namespaces: ns,
        cgroups_path,
        pid: wire.pid,
    }
}

/// The seccomp confinement NRI reports: the policy when sent (it is what the runtime
/// applies), else "unconfined" only when the profile says so; anything else says nothing.
fn runtime_seccomp(
    profile: protobuf::MessageField<api::SecurityProfile>,
    policy: protobuf::MessageField<api::LinuxSeccomp>,
) -> RuntimeSeccomp {
    if let Some(p) = policy.into_option() {
        let errno =
            |v: protobuf::MessageField<api::OptionalUInt32>| v.into_option().map(|o| o.value);
        let list = |v: Vec<String>| (!v.is_empty()).then_some(v);
        let text = |v: String| (!v.is_empty()).then_some(v);
        return RuntimeSeccomp::Policy(SeccompProfile {
            default_action: p.default_action,
            default_errno_ret: errno(p.default_errno),
            architectures: list(p.architectures),
            flags: list(p.flags),
            listener_path: text(p.listener_path),
            listener_metadata: text(p.listener_metadata),
            syscalls: Some(
                p.syscalls
                    .into_iter()
                    .map(|s| SeccompSyscall {
                        names: s.names,
                        action: s.action,
                        errno_ret: errno(s.errno_ret),
                        args: Some(
                            s.args
                                .into_iter()
                                .map(|a| SeccompArg {
                                    index: a.index,
                                    value: a.value,
                                    value_two: a.value_two,
                                    op: a.op,
                                })
                                .collect(),
                        ),
                    })
                    .collect(),
            ),
        });
    }
    match profile.into_option().map(|p| p.profile_type.enum_value()) {
        Some(Ok(api::security_profile::ProfileType::UNCONFINED)) => RuntimeSeccomp::Unconfined,
        _ => RuntimeSeccomp::Unknown,
    }
}

/// An optional wire pod (absent on container-less messages) as a [`Pod`].
pub fn pod_field(wire: protobuf::MessageField<api::PodSandbox>) -> Pod {
    wire.into_option().map(pod).unwrap_or_default()
}

/// An optional wire container (absent on pod events) as a [`Container`].
pub fn container_field(wire: protobuf::MessageField<api::Container>) -> Container {
    wire.into_option().map(container).unwrap_or_default()
}

/// Our [`Adjustment`] as the wire's adjustment.
pub fn adjustment(adj: Adjustment) -> api::ContainerAdjustment {
    api::ContainerAdjustment {
        annotations: adj.annotations.into_iter().collect(),
        mounts: adj.mounts.into_iter().map(mount_to_wire).collect(),
        args: adj.args.unwrap_or_default(),
        ..Default::default()
    }
}

/// The wire event number of an event kind.
pub fn event_to_wire(kind: EventKind) -> api::Event {
    match kind {
        EventKind::RunPodSandbox => api::Event::RUN_POD_SANDBOX,
        EventKind::StopPodSandbox => api::Event::STOP_POD_SANDBOX,
        EventKind::RemovePodSandbox => api::Event::REMOVE_POD_SANDBOX,
        EventKind::CreateContainer => api::Event::CREATE_CONTAINER,
        EventKind::PostCreateContainer => api::Event::POST_CREATE_CONTAINER,
        EventKind::StartContainer => api::Event::START_CONTAINER,
        EventKind::PostStartContainer => api::Event::POST_START_CONTAINER,
        EventKind::UpdateContainer => api::Event::UPDATE_CONTAINER,
        EventKind::PostUpdateContainer => api::Event::POST_UPDATE_CONTAINER,
        EventKind::StopContainer => api::Event::STOP_CONTAINER,
        EventKind::RemoveContainer => api::Event::REMOVE_CONTAINER,
    }
}

/// The event kind of a wire event number; `None` for events we have no use for
/// (pod updates, adjustment validation, unknown numbers).
pub fn event_from_wire(event: protobuf::EnumOrUnknown<api::Event>) -> Option<EventKind> {
    Some(match event.enum_value().ok()? {
        api::Event::RUN_POD_SANDBOX => EventKind::RunPodSandbox,
        api::Event::STOP_POD_SANDBOX => EventKind::StopPodSandbox,
        api::Event::REMOVE_POD_SANDBOX => EventKind::RemovePodSandbox,
        api::Event::CREATE_CONTAINER => EventKind::CreateContainer,
        api::Event::POST_CREATE_CONTAINER => EventKind::PostCreateContainer,
        api::Event::START_CONTAINER => EventKind::StartContainer,
        api::Event::POST_START_CONTAINER => EventKind::PostStartContainer,
        api::Event::UPDATE_CONTAINER => EventKind::UpdateContainer,
        api::Event::POST_UPDATE_CONTAINER => EventKind::PostUpdateContainer,
        api::Event::STOP_CONTAINER => EventKind::StopContainer,
        api::Event::REMOVE_CONTAINER => EventKind::RemoveContainer,
        api::Event::UNKNOWN
        | api::Event::UPDATE_POD_SANDBOX
        | api::Event::POST_UPDATE_POD_SANDBOX
        | api::Event::VALIDATE_CONTAINER_ADJUSTMENT
        | api::Event::LAST => return None,
    })
}

/// The subscription mask for a set of events: event number N is bit N-1.
pub fn event_mask(kinds: &[EventKind]) -> i32 {
    kinds
        .iter()
        .fold(0i32, |mask, &k| mask | 1 << (event_to_wire(k) as i32 - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_bits_follow_event_numbers() {
        assert_eq!(event_mask(&[EventKind::RunPodSandbox]), 0b1);
        assert_eq!(event_mask(&[EventKind::CreateContainer]), 1 << 3);
        assert_eq!(event_mask(&[EventKind::RemoveContainer]), 1 << 10);
        // The eleven classic events fill exactly the mask every runtime generation accepts.
        assert_eq!(event_mask(&EventKind::ALL), (1 << 11) - 1);
        assert_eq!(event_mask(&[]), 0);
    }

    #[test]
    fn every_kind_round_trips_through_the_wire_number() {
        for kind in EventKind::ALL {
            let wire = protobuf::EnumOrUnknown::new(event_to_wire(kind));
            assert_eq!(event_from_wire(wire), Some(kind));
        }
        assert_eq!(event_from_wire(protobuf::EnumOrUnknown::from_i32(12)), None);
        assert_eq!(event_from_wire(protobuf::EnumOrUnknown::from_i32(99)), None);
    }

    #[test]
    fn pod_and_container_fields_are_carried_over() {
        let mut wire = api::PodSandbox {
            id: "p1".into(),
            name: "web".into(),
            uid: "u1".into(),
            namespace: "default".into(),
            pid: 42,
            ips: vec!["10.0.0.2".into(), "not-an-ip".into(), "fd00::2".into()],
            ..Default::default()
        };
        wire.annotations.insert("a".into(), "b".into());
        wire.linux = protobuf::MessageField::some(api::LinuxPodSandbox {
            cgroup_parent: "/kubepods".into(),
            namespaces: vec![api::LinuxNamespace {
                type_: "network".into(),
                path: "/var/run/netns/x".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let p = pod(wire);
        assert_eq!(p.id, "p1");
        assert_eq!(p.ips.len(), 2);
        assert_eq!(p.netns_path(), Some("/var/run/netns/x"));
        assert_eq!(p.cgroup_parent, "/kubepods");
        assert_eq!(p.annotations.get("a").map(String::as_str), Some("b"));
        assert_eq!(p.pid, 42);

        let wire = api::Container {
            id: "c1".into(),
            pod_sandbox_id: "p1".into(),
            name: "app".into(),
            state: protobuf::EnumOrUnknown::new(api::ContainerState::CONTAINER_RUNNING),
            args: vec!["sh".into()],
            env: vec!["A=1".into()],
            pid: 7,
            user: protobuf::MessageField::some(api::User {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![5],
                ..Default::default()
            }),
            linux: protobuf::MessageField::some(api::LinuxContainer {
                cgroups_path: "/kubepods/c1".into(),
                ..Default::default()
            }),
            mounts: vec![api::Mount {
                destination: "/data".into(),
                type_: "bind".into(),
                source: "/srv".into(),
                options: vec!["rbind".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let c = container(wire);
        assert_eq!(c.state, ContainerState::Running);
        assert_eq!(c.process.uid, Some(1000));
        assert_eq!(c.process.gid, Some(1001));
        assert_eq!(c.process.additional_gids, vec![5]);
        assert_eq!(c.cgroups_path, "/kubepods/c1");
        assert_eq!(c.mounts[0].kind, "bind");
        assert_eq!(c.pid, 7);

        // No user on the wire (older runtimes): unknown, not root.
        let c = container(api::Container::default());
        assert_eq!(c.process.uid, None);
        assert_eq!(c.process.oom_score_adj, None);
        assert_eq!(c.process.seccomp, RuntimeSeccomp::Unknown);
    }

    #[test]
    fn oom_score_and_seccomp_come_from_the_linux_part() {
        let with = |linux: api::LinuxContainer| {
            container(api::Container {
                linux: protobuf::MessageField::some(linux),
                ..Default::default()
            })
            .process
        };
        let profile = |kind| {
            protobuf::MessageField::some(api::SecurityProfile {
                profile_type: protobuf::EnumOrUnknown::new(kind),
                ..Default::default()
            })
        };
        let p = with(api::LinuxContainer {
            oom_score_adj: protobuf::MessageField::some(api::OptionalInt {
                value: -997,
                ..Default::default()
            }),
            seccomp_profile: profile(api::security_profile::ProfileType::UNCONFINED),
            ..Default::default()
        });
        assert_eq!(p.oom_score_adj, Some(-997));
        assert_eq!(p.seccomp, RuntimeSeccomp::Unconfined);
        // "runtime default" without the policy itself says nothing usable
        let p = with(api::LinuxContainer {
            seccomp_profile: profile(api::security_profile::ProfileType::RUNTIME_DEFAULT),
            ..Default::default()
        });
        assert_eq!(p.seccomp, RuntimeSeccomp::Unknown);

        let p = with(api::LinuxContainer {
            seccomp_profile: profile(api::security_profile::ProfileType::UNCONFINED),
            seccomp_policy: protobuf::MessageField::some(api::LinuxSeccomp {
                default_action: "SCMP_ACT_ERRNO".into(),
                default_errno: protobuf::MessageField::some(api::OptionalUInt32 {
                    value: 1,
                    ..Default::default()
                }),
                architectures: vec!["SCMP_ARCH_X86_64".into()],
                syscalls: vec![api::LinuxSyscall {
                    names: vec!["clone".into()],
                    action: "SCMP_ACT_ALLOW".into(),
                    args: vec![api::LinuxSeccompArg {
                        index: 0,
                        value: 2114060288,
                        value_two: 0,
                        op: "SCMP_CMP_MASKED_EQ".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        let RuntimeSeccomp::Policy(policy) = p.seccomp else {
            panic!("no policy: {:?}", p.seccomp);
        };
        assert_eq!(policy.default_errno_ret, Some(1));
        assert_eq!(policy.flags, None);
        let syscalls = policy.syscalls.unwrap();
        assert_eq!(syscalls[0].errno_ret, None);
        let args = syscalls[0].args.as_ref().unwrap();
        assert_eq!(
            (args[0].value, args[0].op.as_str()),
            (2114060288, "SCMP_CMP_MASKED_EQ")
        );
    }

    #[test]
    fn adjustment_maps_to_the_wire_fields() {
        let mut adj = Adjustment {
            args: Some(vec!["/gate".into(), "app".into()]),
            ..Default::default()
        };
        adj.annotations.insert("k".into(), "v".into());
        adj.mounts.push(Mount {
            destination: "/.gate".into(),
            kind: "bind".into(),
            source: "/run/gate".into(),
            options: vec!["ro".into()],
        });
        let wire = adjustment(adj);
        assert_eq!(wire.args, vec!["/gate", "app"]);
        assert_eq!(wire.mounts[0].type_, "bind");
        assert_eq!(wire.annotations.get("k").map(String::as_str), Some("v"));
    }
}
