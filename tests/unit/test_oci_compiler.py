"""Golden tests of the pure container compiler: exact argv, no engine needed."""

from __future__ import annotations

import attrs
from returns.result import Failure, Success

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.oci import ContainerRun, EngineTraits, Runtime, compile_container_args
from mechasandbox.backends.oci.compiler import (
    AGENT_PATH,
    TMP_BYTES_WITHOUT_MEMORY_LIMIT,
    SessionAgent,
    command_environment,
    compile_exec_args,
    tmp_bytes,
)
from mechasandbox.backends.oci.env_file import MAX_ENV_FILE_BYTES, env_file
from mechasandbox.backends.oci.lifeline import Lifeline, keeper_argv, watched_argv
from mechasandbox.backends.oci.policy_mounts import PolicyMounts
from mechasandbox.domain import MIB, EnvironmentPolicy, Limits, Policy, RunRequest
from mechasandbox.domain.policy import NetworkMode, NetworkPolicy
from mechasandbox.network.bridge import ProxyBridge, bridge_script

HOST = HostContext(
    env=(
        ("AWS_SECRET_ACCESS_KEY", "hunter2"),
        ("HOME", "/home/dev"),
        ("LANG", "C.UTF-8"),
        ("OPENAI_API_KEY", "sk-secret"),
        ("PATH", "/home/dev/.venv/bin:/usr/bin"),
    ),
    home="/home/dev",
    uid=1000,
    gid=1000,
    platform="linux",
)
RUN = ContainerRun(
    run_id="0123456789abcdef",
    owner="devbox:4242",
    workspace="/home/dev/project",
    protected=(".git/hooks", ".git/config"),
)
REQUEST = RunRequest(argv=["python3", "-c", "print(1)"], workspace="/home/dev/project")


def test_docker_default_policy_golden() -> None:
    args = compile_container_args(
        REQUEST, Policy(), HOST, "img:1", Runtime.DEFAULT, EngineTraits.docker(), run=RUN
    )
    assert args == (
        "run",
        "--name", "mechasandbox-0123456789abcdef",
        "--label", "mechasandbox.run=0123456789abcdef",
        "--label", "mechasandbox.owner=devbox:4242",
        "--pull", "never",
        "--log-driver", "none",
        "--init",
        "--network", "none",
        "--ipc", "private",
        "--hostname", "sandbox",
        "--read-only",
        "--tmpfs", f"/tmp:rw,nosuid,nodev,mode=1777,size={2 * 1024 * MIB}",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--user", "1000:1000",
        "--mount", "type=bind,source=/home/dev/project,target=/home/dev/project",
        "--mount",
        "type=bind,source=/home/dev/project/.git/hooks,target=/home/dev/project/.git/hooks,readonly",
        "--mount",
        "type=bind,source=/home/dev/project/.git/config,target=/home/dev/project/.git/config,readonly",
        "--workdir", "/home/dev/project",
        "--memory", str(4 * 1024 * MIB),
        "--memory-swap", str(4 * 1024 * MIB),
        "--pids-limit", "512",
        "--ulimit", "core=0:0",
        "--ulimit", "nofile=1024:1024",
        "--ulimit", f"fsize={1024 * MIB}:{1024 * MIB}",
        "--env-file", "/dev/fd/3",
        "--entrypoint", "python3",
        "img:1",
        "-c", "print(1)",
    )  # fmt: skip


def test_podman_gvisor_stdin_and_limits_golden() -> None:
    policy = Policy(
        limits=Limits(
            timeout_s=5,
            cpu_time_s=2.5,
            memory_bytes=64 * MIB,
            max_processes=32,
            max_open_files=None,
            max_file_size_bytes=None,
        ),
        environment=EnvironmentPolicy(
            allow=("LANG",), pass_through=("OPENAI_API_KEY",), set=(("PATH", "/opt/bin:/bin"),)
        ),
    )
    request = RunRequest(argv=["cat"], workspace="/w", stdin=b"data")
    run = ContainerRun(run_id="r1", owner="h:1", workspace="/w")
    traits = EngineTraits.podman(init_path="/usr/bin/tini-static", rootless=True)
    args = compile_container_args(
        request, policy, HOST, "img:1", Runtime.RUNSC, traits, run=run, cpus=1.5
    )
    assert args == (
        "run",
        "--name", "mechasandbox-r1",
        "--label", "mechasandbox.run=r1",
        "--label", "mechasandbox.owner=h:1",
        "--pull", "never",
        "--log-driver", "none",
        "--init",
        "--init-path", "/usr/bin/tini-static",
        "--interactive",
        "--network", "none",
        "--ipc", "private",
        "--hostname", "sandbox",
        "--read-only",
        "--tmpfs", f"/tmp:rw,nosuid,nodev,mode=1777,size={32 * MIB}",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--user", "1000:1000",
        "--userns", "keep-id",
        "--mount", "type=bind,source=/w,target=/w,nosuid,nodev",
        "--workdir", "/w",
        "--memory", str(64 * MIB),
        "--memory-swap", str(64 * MIB),
        "--pids-limit", "32",
        "--cpus", "1.5",
        "--ulimit", "core=0:0",
        "--ulimit", "cpu=3:4",
        "--ulimit", "nproc=32:32",
        "--runtime", "runsc",
        "--runtime-flag", "network=none",
        "--env-file", "/dev/fd/3",
        "--entrypoint", "cat",
        "img:1",
    )  # fmt: skip


def test_no_limits_no_limit_flags_and_network_always_none() -> None:
    policy = Policy(
        limits=Limits(
            timeout_s=None,
            memory_bytes=None,
            max_processes=None,
            max_open_files=None,
            max_file_size_bytes=None,
        )
    )
    args = compile_container_args(
        REQUEST, policy, HOST, "img", Runtime.DEFAULT, EngineTraits.docker(), run=RUN
    )
    for flag in ("--memory", "--memory-swap", "--pids-limit", "--cpus", "--runtime"):
        assert flag not in args
    assert args[args.index("--network") + 1] == "none"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--ulimit"] == ["core=0:0"]


def test_host_secrets_never_reach_the_container() -> None:
    args = compile_container_args(
        REQUEST, Policy(), HOST, "img", Runtime.DEFAULT, EngineTraits.docker(), run=RUN
    )
    joined = "\n".join(args)
    assert "hunter2" not in joined
    assert "sk-secret" not in joined
    assert "/home/dev/.venv/bin" not in joined  # the host's PATH means nothing in the image
    # No variable on the command line (every user reads it in /proc): an env file on fd 3.
    assert "--env" not in args
    assert args[args.index("--env-file") + 1] == "/dev/fd/3"
    env = command_environment(Policy(), HOST)
    assert env == {"HOME": "/tmp", "LANG": "C.UTF-8"}


def test_podman_without_init_binary_runs_without_init() -> None:
    args = compile_container_args(
        REQUEST,
        Policy(),
        HOST,
        "img",
        Runtime.DEFAULT,
        EngineTraits.podman(init=False),
        run=RUN,
    )
    assert "--init" not in args
    assert "--init-path" not in args


def test_allowlist_bridge_mounts_the_socket_and_wraps_the_command() -> None:
    bridge = ProxyBridge(socket="/tmp/msb-net-x/proxy.sock", socat="/usr/bin/socat")
    policy = Policy(network=NetworkPolicy(mode=NetworkMode.ALLOWLIST, allow=("api.test",)))
    args = compile_container_args(
        REQUEST, policy, HOST, "img:1", Runtime.DEFAULT, EngineTraits.docker(), run=RUN,
        bridge=bridge,
    )  # fmt: skip
    assert args[args.index("--network") + 1] == "none"
    mount = "type=bind,source=/tmp/msb-net-x/proxy.sock,target=/run/mechasandbox/proxy.sock"
    assert mount + ",readonly" in args
    env = command_environment(policy, HOST, bridge=bridge)
    assert env["http_proxy"] == env["HTTPS_PROXY"] == "http://127.0.0.1:3128"
    assert env["NO_PROXY"] == ""
    tail = args[args.index("--entrypoint") :]
    assert tail == (
        "--entrypoint", "/bin/sh", "img:1",
        "-c", bridge_script(bridge), "mechasandbox-bridge", "python3", "-c", "print(1)",
    )  # fmt: skip
    keeper = compile_container_args(
        REQUEST, policy, HOST, "img:1", Runtime.DEFAULT, EngineTraits.docker(), run=RUN,
        keeper=True, bridge=bridge,
    )  # fmt: skip
    assert not any("proxy.sock" in arg for arg in keeper)


def test_a_session_container_mounts_its_proxy_socket_and_runs_its_agent() -> None:
    # The agent starts each command behind the bridge: the socket is the session's, mounted
    # at the container's creation; the container's process stays the agent.
    bridge = ProxyBridge(socket="/tmp/msb-net-x/proxy.sock", socat="/usr/bin/socat")
    policy = Policy(network=NetworkPolicy(mode=NetworkMode.ALLOWLIST, allow=("api.test",)))
    agent = SessionAgent(host_path="/opt/msb/session-agent", arguments=("--pipes",))
    args = compile_container_args(
        REQUEST, policy, HOST, "img:1", Runtime.DEFAULT, EngineTraits.docker(),
        run=attrs.evolve(RUN, agent=agent), bridge=bridge,
    )  # fmt: skip
    assert args[args.index("--network") + 1] == "none"
    mount = "type=bind,source=/tmp/msb-net-x/proxy.sock,target=/run/mechasandbox/proxy.sock"
    assert mount + ",readonly" in args
    assert args[args.index("--entrypoint") :] == (
        "--entrypoint", AGENT_PATH, "img:1", "--pipes",
    )  # fmt: skip
    assert "--env-file" not in args  # each command's environment travels in its records


def test_a_file_placeholder_is_bound_from_itself_a_directory_one_from_the_empty_dir() -> None:
    """`.git/commondir` is covered by the file the host makes (a directory mounted there
    fails: the engine refuses a directory onto a file); `.git/modules` by the empty one."""
    run = ContainerRun(
        run_id="r1",
        owner="h:1",
        workspace="/w",
        pinned=(".git",),
        placeholders=(".git/commondir", ".git/modules"),
        empty_dir="/tmp/empty",
    )
    args = compile_container_args(
        REQUEST, Policy(), HOST, "img:1", Runtime.DEFAULT, EngineTraits.docker(), run=run
    )
    mounts = [args[i + 1] for i, arg in enumerate(args) if arg == "--mount"]
    assert "type=bind,source=/w/.git/commondir,target=/w/.git/commondir,readonly" in mounts
    assert "type=bind,source=/tmp/empty,target=/w/.git/modules,readonly" in mounts


def test_podman_env_file_golden() -> None:
    """What the CLI reads on descriptor 3: one NAME=VALUE a line, values verbatim."""
    policy = Policy(
        environment=EnvironmentPolicy(
            allow=("LANG",), pass_through=("OPENAI_API_KEY",), set=(("QUOTED", ' "a b" #c '),)
        )
    )
    made = env_file(command_environment(policy, HOST))
    assert made == Success(
        b'HOME=/tmp\nLANG=C.UTF-8\nOPENAI_API_KEY=sk-secret\nQUOTED= "a b" #c \n'
    )


def test_env_file_refuses_what_it_cannot_carry() -> None:
    for name, value in (
        ("MULTI", "one\nINJECTED=1"),
        ("RETURN", "value\r"),
        ("BAD NAME", "x"),
        ("#COMMENT", "x"),
        ("NÄME", "x"),
        ("SURROGATE", "\udcff"),
    ):
        made = env_file({name: value})
        assert isinstance(made, Failure), name
        assert made.failure().field == "environment"
        assert repr(name) in made.failure().problem, made.failure().problem
    too_big = env_file({"BIG": "x" * MAX_ENV_FILE_BYTES})
    assert isinstance(too_big, Failure)
    assert "bytes" in too_big.failure().problem


def test_exec_passes_the_environment_in_the_env_file_too() -> None:
    args = compile_exec_args(REQUEST, Policy(), HOST, container="c1", workspace="/w")
    assert args == (
        "exec", "--user", "1000:1000", "--workdir", "/w", "--env-file", "/dev/fd/3",
        "c1", "python3", "-c", "print(1)",
    )  # fmt: skip


def test_tmp_is_half_the_memory_limit_or_a_fixed_size_without_one() -> None:
    assert tmp_bytes(Limits(memory_bytes=64 * MIB)) == 32 * MIB
    assert tmp_bytes(Limits(memory_bytes=None)) == TMP_BYTES_WITHOUT_MEMORY_LIMIT == 2048 * MIB


MOUNTS = PolicyMounts(
    readable=("/data/reference", "/home/dev"),
    writable=("/home/dev/.cache/pip", "/srv/cache"),
    masked_dirs=("/home/dev/.ssh", "/home/dev/project/keys"),
    masked_files=("/data/reference/.env", "/home/dev/project/.netrc"),
)


def test_policy_mounts_golden_docker() -> None:
    run = ContainerRun(
        run_id="r1",
        owner="h:1",
        workspace="/home/dev/project",
        pinned=(".git",),
        protected=(".git/hooks", "keys/hooks"),
        mounts=MOUNTS,
    )
    args = compile_container_args(
        REQUEST, Policy(), HOST, "img:1", Runtime.DEFAULT, EngineTraits.docker(), run=run
    )
    mounts = [args[i + 1] for i, arg in enumerate(args) if arg == "--mount"]
    cover = "tmpfs-mode=0000,tmpfs-size=4096,ro"
    assert mounts == [
        "type=bind,source=/home/dev/project,target=/home/dev/project",
        "type=bind,source=/home/dev/project/.git,target=/home/dev/project/.git",
        "type=bind,source=/home/dev/project/.git/hooks,target=/home/dev/project/.git/hooks,"
        "readonly",
        # (keys/hooks is under the keys mask: left out); then by depth, masks last
        "type=bind,source=/data/reference,target=/data/reference,readonly",
        "type=bind,source=/home/dev,target=/home/dev,readonly",
        "type=bind,source=/srv/cache,target=/srv/cache",
        "type=bind,source=/dev/null,target=/data/reference/.env,readonly",
        f"type=tmpfs,destination=/home/dev/.ssh,{cover}",
        "type=bind,source=/home/dev/.cache/pip,target=/home/dev/.cache/pip",
        "type=bind,source=/dev/null,target=/home/dev/project/.netrc,readonly",
        f"type=tmpfs,destination=/home/dev/project/keys,{cover}",
    ]


def test_a_mount_at_or_below_a_mask_is_left_out_and_podman_covers_do_not_copy_up() -> None:
    mounts = PolicyMounts(
        readable=("/home/dev/.ssh", "/home/dev/.ssh/config", "/opt/tools"),
        hidden_home="/home/dev",
        masked_dirs=("/home/dev/.ssh",),
    )
    run = ContainerRun(run_id="r1", owner="h:1", workspace="/home", mounts=mounts)
    traits = EngineTraits.podman()
    args = compile_container_args(
        REQUEST, Policy(), HOST, "img:1", Runtime.DEFAULT, traits, run=run
    )
    assert [args[i + 1] for i, arg in enumerate(args) if arg == "--mount"] == [
        # (podman: every bind nosuid,nodev)
        "type=bind,source=/home,target=/home,nosuid,nodev",
        "type=bind,source=/opt/tools,target=/opt/tools,readonly,nosuid,nodev",
        "type=tmpfs,destination=/home/dev,tmpfs-mode=0755,tmpfs-size=4096,ro,notmpcopyup",
        "type=tmpfs,destination=/home/dev/.ssh,tmpfs-mode=0000,tmpfs-size=4096,ro,notmpcopyup",
    ]


def test_pins_above_masks_are_mounted_once() -> None:
    """A mask's pinned parent that a protected path pins already (`.git`) is not mounted
    twice (the engines refuse two mounts at one place)."""
    mounts = PolicyMounts(
        masked_files=("/w/.git/secret", "/w/conf/deep/key"),
        pinned=("/w/.git", "/w/conf", "/w/conf/deep"),
    )
    run = ContainerRun(run_id="r1", owner="h:1", workspace="/w", pinned=(".git",), mounts=mounts)
    args = compile_container_args(
        REQUEST, Policy(), HOST, "img:1", Runtime.DEFAULT, EngineTraits.docker(), run=run
    )
    assert [args[i + 1] for i, arg in enumerate(args) if arg == "--mount"] == [
        "type=bind,source=/w,target=/w",
        "type=bind,source=/w/.git,target=/w/.git",
        "type=bind,source=/w/conf,target=/w/conf",
        "type=bind,source=/w/conf/deep,target=/w/conf/deep",
        "type=bind,source=/dev/null,target=/w/.git/secret,readonly",
        "type=bind,source=/dev/null,target=/w/conf/deep/key,readonly",
    ]


def test_a_tied_run_is_attached_watched_and_filtered() -> None:
    """The lifeline: `--interactive` (the CLI's held stdin), the watcher as the entry with
    the deadline and the input file mounted read-only, room for the watcher's processes;
    the seccomp profile replaces the engine's."""
    lifeline = Lifeline(deadline_s=33, stdin_file="/tmp/msb-stdin-x/stdin")
    run = attrs.evolve(RUN, seccomp_profile="/tmp/msb-seccomp-x/x86_64.json", lifeline=lifeline)
    request = attrs.evolve(REQUEST, stdin=b"input")
    policy = Policy(limits=Limits(max_processes=16))
    args = compile_container_args(
        request, policy, HOST, "img:1", Runtime.DEFAULT, EngineTraits.docker(), run=run
    )
    assert args.count("--interactive") == 1
    assert "--detach" not in args
    security = [args[i + 1] for i, arg in enumerate(args) if arg == "--security-opt"]
    assert security == ["no-new-privileges", "seccomp=/tmp/msb-seccomp-x/x86_64.json"]
    mount = "type=bind,source=/tmp/msb-stdin-x/stdin,target=/run/mechasandbox/stdin,readonly"
    assert mount in args
    assert args[args.index("--pids-limit") + 1] == "20"
    tail = args[args.index("--entrypoint") :]
    watched = watched_argv(lifeline, REQUEST.argv)
    assert tail == ("--entrypoint", watched[0], "img:1", *watched[1:])
    assert watched[3:6] == ["mechasandbox-watch", "33", "/run/mechasandbox/stdin"]
    assert watched[6:] == ["python3", "-c", "print(1)"]
    # Without input and without a deadline: /dev/null, 0.
    bare = watched_argv(Lifeline(), ("true",))
    assert bare[3:] == ["mechasandbox-watch", "0", "/dev/null", "true"]


def test_a_tied_keeper_is_attached_and_waits_on_its_lifeline() -> None:
    run = attrs.evolve(RUN, lifeline=Lifeline())
    args = compile_container_args(
        REQUEST, Policy(), HOST, "img:1", Runtime.DEFAULT, EngineTraits.docker(), run=run,
        keeper=True,
    )  # fmt: skip
    assert "--interactive" in args and "--detach" not in args
    keeper = keeper_argv()
    assert args[args.index("--entrypoint") :] == ("--entrypoint", keeper[0], "img:1", *keeper[1:])
    assert args[args.index("--pids-limit") + 1] == "513"
    untied = compile_container_args(
        REQUEST, Policy(), HOST, "img:1", Runtime.DEFAULT, EngineTraits.docker(), run=RUN,
        keeper=True,
    )  # fmt: skip
    assert "--detach" in untied and "--interactive" not in untied
    assert untied[-3:] == ("sleep", "img:1", "infinity")


def test_gvisor_is_told_to_apply_the_profile_where_the_engine_can_say_so() -> None:
    """podman passes runsc `--oci-seccomp` per run; docker cannot (its registration must
    carry it: the probe checks)."""
    run = attrs.evolve(RUN, seccomp_profile="/p.json")
    podman = compile_container_args(
        REQUEST, Policy(), HOST, "img", Runtime.RUNSC, EngineTraits.podman(), run=run
    )
    flags = [podman[i + 1] for i, arg in enumerate(podman) if arg == "--runtime-flag"]
    assert flags == ["oci-seccomp", "network=none"]
    docker = compile_container_args(
        REQUEST, Policy(), HOST, "img", Runtime.RUNSC, EngineTraits.docker(), run=run
    )
    assert "--runtime-flag" not in docker
    assert "seccomp=/p.json" in docker


def test_podman_binds_are_nosuid_nodev_docker_cannot_say_it() -> None:
    run = attrs.evolve(RUN, empty_dir="/tmp/empty", placeholders=(".envrc",))
    podman = compile_container_args(
        REQUEST, Policy(), HOST, "img", Runtime.DEFAULT, EngineTraits.podman(), run=run
    )
    mounts = [podman[i + 1] for i, arg in enumerate(podman) if arg == "--mount"]
    assert mounts and all(m.endswith(",nosuid,nodev") for m in mounts)
    docker = compile_container_args(
        REQUEST, Policy(), HOST, "img", Runtime.DEFAULT, EngineTraits.docker(), run=run
    )
    assert not any("nosuid" in docker[i + 1] for i, arg in enumerate(docker) if arg == "--mount")
