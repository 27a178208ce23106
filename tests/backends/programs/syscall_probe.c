/* What a command in a container tries beyond the shell's reach: every way to give a file
 * the setuid/setgid bits, and the kernel interfaces the seccomp profile must refuse.
 * One line per attempt, "NAME: ok" or "NAME: <strerror>". Built static by the tests
 * (cc -static), so that it runs in any image.
 *
 *   syscall_probe FILE          the attempts on FILE (created 0755 first)
 *   syscall_probe FILE int80    chmod 04755 through the i386 entry (int 0x80): killed
 *   syscall_probe FILE x32      chmod 04755 through the x32 entry: killed
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *what, long rc) {
    printf("%s: %s\n", what, rc < 0 ? strerror(errno) : "ok");
}

#if defined(__x86_64__)
static long int80(long nr, long a, long b) {
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b) : "memory");
    if (ret < 0 && ret > -4096) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}
#endif

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) return 2;
    const char *f = argv[1];
    char created[4096];
    snprintf(created, sizeof created, "%s.created", f);
    if (argc > 2) {
#if defined(__x86_64__)
        if (!strcmp(argv[2], "int80")) report("int80 chmod 4755", int80(15, (long)f, 04755));
        if (!strcmp(argv[2], "x32")) report("x32 chmod 4755", syscall(0x40000000 | 90, f, 04755));
#endif
        return 0;
    }
    int fd = open(f, O_CREAT | O_WRONLY, 0755);
    if (fd >= 0) close(fd);
    report("chmod 4755", chmod(f, 04755));
    report("chmod 2755", chmod(f, 02755));
    fd = open(f, O_RDONLY);
    report("fchmod 4755", fd < 0 ? -1 : fchmod(fd, 04755));
    if (fd >= 0) close(fd);
    report("fchmodat 6755", fchmodat(AT_FDCWD, f, 06755, 0));
    report("fchmodat2 4755", syscall(452, AT_FDCWD, f, 04755, 0));
    report("chmod 4755 upper bits", syscall(SYS_fchmodat, AT_FDCWD, f, 0x100000000L | 04755));
    fd = open(created, O_CREAT | O_WRONLY, 04755);
    report("open O_CREAT 4755", fd);
    if (fd >= 0) close(fd);
    /* A file capability (VFS_CAP_REVISION_2, effective, permitted CAP_SETUID): as good as
     * setuid root for whoever runs the file. */
    unsigned int caps[5] = {0x02000001, 1u << 7, 0, 0, 0};
    report("setxattr security.capability", setxattr(f, "security.capability", caps, sizeof caps, 0));
    /* Another process's limits (pid 1: the container's first process; in a session, the
     * agent): set to what they already are, so that an allowed call changes nothing. */
    struct rlimit core;
    report("prlimit pid 1 read", prlimit(1, RLIMIT_CORE, NULL, &core));
    report("prlimit pid 1 set", prlimit(1, RLIMIT_CORE, &core, NULL));
    struct rlimit own;
    getrlimit(RLIMIT_CORE, &own);
    report("prlimit own", prlimit(0, RLIMIT_CORE, &own, NULL));
    report("socket AF_VSOCK", syscall(SYS_socket, 40, SOCK_STREAM, 0));
    report("socket AF_VSOCK upper bits", syscall(SYS_socket, 0x100000028L, SOCK_STREAM, 0));
    report("socket AF_PACKET", syscall(SYS_socket, 17, SOCK_RAW, 0));
    report("socket AF_INET", syscall(SYS_socket, 2, SOCK_STREAM, 0));
    report("io_uring_setup", syscall(425, 1, NULL));
    report("keyctl", syscall(SYS_keyctl, 0, 0, 0));
    report("add_key", syscall(SYS_add_key, "user", "x", "y", 1, -2));
    report("unshare", unshare(CLONE_NEWUSER));
    report("bpf", syscall(SYS_bpf, 0, NULL, 0));
    report("ptrace", syscall(SYS_ptrace, 16, 1, 0, 0));
    report("userfaultfd", syscall(SYS_userfaultfd, 0));
    report("perf_event_open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
    report("mknod", mknod("fifo", S_IFIFO | 0644, 0));
    return 0;
}
