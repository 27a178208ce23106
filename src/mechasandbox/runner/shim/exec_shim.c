/*
 * mechasandbox-exec: a warm child of the spawn helper that is not a Python process.
 *
 * The helper (runner/warm.py) starts it with posix_spawn ahead of a run:
 *
 *     mechasandbox-exec HELPER_PID [CGROUP_PROCS_FILE...]
 *     fd 3: the socket the host hands the run on      fd 4: the report pipe
 *
 * It dies with the helper, joins the cgroups, and waits. The host sends one frame (a 4-byte
 * big-endian length, then records, see runner/native.py) with the run's stdin, stdout and
 * stderr attached. The shim marks the report pipe ('+'), puts the stdio in place, closes
 * every other descriptor, carries out the records in order (chdir, umask, the hooks' system
 * calls, rlimits: the order of runner/child.py's `exec_run`) and execs. Any failure is
 * written to the report pipe as "ERRNO:STAGE" and the shim exits 127: the command never
 * runs half-confined. The report pipe is close-on-exec, so an empty report means exec'd.
 *
 * Why it exists: exec from a process forked from Python tears down a copied address space
 * (0.1-0.3 ms), and the decoding and setup in Python cost as much again; the helper's fork
 * of the next warm child also shares (and then copies) its pages. The policy logic stays in
 * Python: the host sends plain system calls with their arguments.
 */
#include "records.h"

#define RUNS_FD 3
#define REPORT_FD 4

/* Read exactly `count` bytes; 0 when the peer closed before the first byte. */
static int receive_exact(unsigned char *buffer, size_t count, int first) {
    size_t done = 0;
    while (done < count) {
        union {
            char space[CMSG_SPACE(MAX_FDS * sizeof(int))];
            struct cmsghdr align;
        } control;
        struct iovec part = {buffer + done, count - done};
        struct msghdr message = {0};
        message.msg_iov = &part;
        message.msg_iovlen = 1;
        message.msg_control = control.space;
        message.msg_controllen = sizeof control.space;
        ssize_t got = recvmsg(RUNS_FD, &message, MSG_CMSG_CLOEXEC);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            fail(errno);
        keep_fds(&message);
        if (got == 0) {
            if (first && done == 0)
                return 0;
            fail(EPIPE);
        }
        done += (size_t)got;
    }
    return 1;
}

/* --- the steps ------------------------------------------------------------------------- */
/* The errno of the first join that failed (0: all joined). */
static int join_cgroups(int count, char **files) {
    for (int i = 0; i < count; i++) {
        int procs = open(files[i], O_WRONLY | O_CLOEXEC);
        if (procs < 0)
            return errno ? errno : EIO;
        ssize_t wrote = write(procs, "0", 1);
        int code = errno;
        close(procs);
        if (wrote != 1)
            return code ? code : EIO;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--protocol") == 0) {
        printf("%d\n", PROTOCOL);
        return 0;
    }
    if (argc < 2)
        return 2;
    /* Die with the helper; if it is gone already, there is nobody to hand us a run. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0 || getppid() != atoi(argv[1]))
        return 0;
    report_fd = REPORT_FD;
    if (fcntl(REPORT_FD, F_SETFD, FD_CLOEXEC) < 0 || fcntl(RUNS_FD, F_SETFD, FD_CLOEXEC) < 0)
        return 2;
    int moved = fcntl(REPORT_FD, F_DUPFD_CLOEXEC, REPORT_FD_FLOOR);
    if (moved >= 0) {
        close(REPORT_FD);
        report_fd = moved;
    }
    /* A join that failed is reported once a run has come (as the Python warm child does):
     * the run is then answered as not started, never lost. */
    int joined = join_cgroups(argc - 2, argv + 2);

    unsigned char header[4];
    if (!receive_exact(header, sizeof header, 1))
        return 0; /* the host let this child go: no run was handed to it */
    if (write(report_fd, "+", 1) != 1)
        return 127;
    uint32_t length = (uint32_t)header[0] << 24 | (uint32_t)header[1] << 16 |
                      (uint32_t)header[2] << 8 | header[3];
    if (length > MAX_FRAME)
        fail(EMSGSIZE);
    unsigned char *frame = malloc(length ? length : 1);
    if (frame == NULL)
        fail(ENOMEM);
    receive_exact(frame, length, 0);
    if (joined != 0) {
        stage = "cgroup";
        fail(joined);
    }
    put_stdio();
    struct cursor records = {frame, frame + length};
    carry_out(&records);
    return 127;
}
