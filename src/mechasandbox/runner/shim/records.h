/*
 * The records a run is set up by (runner/native.py): the decoder and the system calls both
 * native programs carry out, the exec shim (exec_shim.c, a warm child of the spawn helper)
 * and the session agent (session_agent.c, a command's fork inside a long-lived sandbox).
 * One copy, included by each (each is one translation unit: `cc FILE.c`), so that a command
 * in a session is set up by the same code as a one-shot run.
 *
 * A failure is written to `report_fd` as "ERRNO:STAGE" and the process exits 127: the
 * command never runs half-confined.
 */
#ifndef MECHASANDBOX_RECORDS_H
#define MECHASANDBOX_RECORDS_H
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

/* The records' format (runner/native.py's PROTOCOL): a helper uses a shim only if it
 * answers `--protocol` with this, so that a binary left from an older build is not used. */
#define PROTOCOL 3
/* Where the report pipe is moved to: out of the low numbers a run's rlimit on open files
 * leaves to the set-up (the Landlock ruleset and each rule's path need one each). */
#define REPORT_FD_FLOOR 64
#define MAX_FRAME (8u * 1024u * 1024u)
#define MAX_FDS 64

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_add_rule 445
#define SYS_landlock_restrict_self 446
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 1u
#endif
#define LANDLOCK_RULE_PATH_BENEATH 1
#define LANDLOCK_RULE_NET_PORT 2
/* Rights that mean something on a non-directory: a rule on a file with others is EINVAL. */
#define FILE_RIGHTS ((1ull << 0) | (1ull << 1) | (1ull << 2) | (1ull << 14) | (1ull << 15))

struct ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};

struct path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

struct net_port_attr {
    uint64_t allowed_access;
    uint64_t port;
};

static const char *stage = "setup";
static int report_fd = -1; /* where a failure is told: set by each program */

static void fail(int code) {
    char text[96];
    int length = snprintf(text, sizeof text, "%d:%s", code ? code : EIO, stage);
    if (length > 0 && write(report_fd, text, (size_t)length) < 0) {
        /* nothing left to tell it with: the helper reports the exit as a failure */
    }
    _exit(127);
}

static void check(long result) {
    if (result < 0)
        fail(errno);
}

/* --- reading the frame ------------------------------------------------------------------ */
struct cursor {
    const unsigned char *at;
    const unsigned char *end;
};

static void need(const struct cursor *c, size_t count) {
    if ((size_t)(c->end - c->at) < count) {
        stage = "setup";
        fail(EPROTO);
    }
}

static uint32_t take_u32(struct cursor *c) {
    need(c, 4);
    uint32_t value;
    memcpy(&value, c->at, 4); /* little-endian: both ends are this host */
    c->at += 4;
    return value;
}

static uint64_t take_u64(struct cursor *c) {
    need(c, 8);
    uint64_t value;
    memcpy(&value, c->at, 8);
    c->at += 8;
    return value;
}

/* A string field: copied out NUL-terminated; one with a NUL inside is refused. */
static char *take_string(struct cursor *c, uint32_t length) {
    need(c, length);
    if (memchr(c->at, 0, length) != NULL) {
        stage = "setup";
        fail(EINVAL);
    }
    char *text = malloc((size_t)length + 1);
    if (text == NULL)
        fail(ENOMEM);
    memcpy(text, c->at, length);
    text[length] = 0;
    c->at += length;
    return text;
}

static int received[MAX_FDS];
static int received_count;

static void keep_fds(struct msghdr *message) {
    for (struct cmsghdr *h = CMSG_FIRSTHDR(message); h != NULL; h = CMSG_NXTHDR(message, h)) {
        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *fds = (int *)CMSG_DATA(h);
        for (size_t i = 0; i < count; i++) {
            if (received_count < MAX_FDS)
                received[received_count++] = fds[i];
            else
                close(fds[i]);
        }
    }
}

/* --- the steps ------------------------------------------------------------------------- */
static void put_stdio(void) {
    stage = "stdio";
    if (received_count < 3)
        fail(EBADF);
    /* Out of the way first: one of them may sit at 0-2 (the helper's own stdio closed). */
    int moved[3];
    for (int i = 0; i < 3; i++) {
        moved[i] = fcntl(received[i], F_DUPFD_CLOEXEC, 10);
        check(moved[i]);
    }
    for (int target = 0; target < 3; target++)
        check(dup2(moved[target], target));
    /* Keep only 0-2 and the report pipe (close-on-exec): nothing of the helper leaks in.
     * (Everything else here is close-on-exec already; this is so by construction too.) */
    if (syscall(SYS_close_range, 3u, (unsigned)report_fd - 1, 0u) < 0 ||
        syscall(SYS_close_range, (unsigned)report_fd + 1, ~0u, 0u) < 0) {
        long highest = sysconf(_SC_OPEN_MAX); /* before Linux 5.9: one close per number */
        if (highest < 0 || highest > 65536)
            highest = 65536;
        for (int fd = 3; fd < highest; fd++)
            if (fd != report_fd)
                close(fd);
    }
}

static void drop_capabilities(void) {
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    check(syscall(SYS_capget, &header, data));
    /* Without CAP_SETPCAP the bounding set cannot change, and no_new_privs already keeps
     * exec from granting what it holds. */
    if (data[0].effective & (1u << CAP_SETPCAP)) {
        for (int cap = 0; cap < 64; cap++) {
            if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL && errno != EPERM)
                fail(errno);
        }
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        fail(errno);
    memset(data, 0, sizeof data);
    check(syscall(SYS_capset, &header, data));
}

static void install_seccomp(const unsigned char *program, uint32_t length) {
    if (length == 0 || length % 8 != 0 || length / 8 > 0xffff)
        fail(EINVAL);
    struct sock_fprog filter = {(unsigned short)(length / 8), (struct sock_filter *)program};
    check(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
    check(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &filter, 0, 0));
}

/* Bytes the program reads from a descriptor (bwrap: `--seccomp FD`, `--args FD`): an
 * anonymous memory file, filled and rewound before exec (runner/fd_data.py does the same). */
static void data_on_fd(int target, const unsigned char *data, uint32_t length) {
    if (fcntl(target, F_GETFD) >= 0)
        fail(EBUSY); /* never clobber a descriptor in use (the report pipe) */
    int memory = (int)syscall(SYS_memfd_create, "mechasandbox-data", MFD_CLOEXEC);
    check(memory);
    for (uint32_t done = 0; done < length;) {
        ssize_t wrote = write(memory, data + done, length - done);
        if (wrote < 0)
            fail(errno);
        done += (uint32_t)wrote;
    }
    check(lseek(memory, 0, SEEK_SET));
    if (memory != target) {
        check(dup2(memory, target));
        close(memory);
    } else {
        check(fcntl(target, F_SETFD, 0));
    }
}

static void add_path_rule(int ruleset, uint64_t access, const char *path) {
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR || errno == EACCES)
            return; /* not there as this process sees it: nothing to grant (the host does
                       not look for each path first, see landlock_rules.expand_rules) */
        fail(errno);
    }
    struct stat info;
    if (fstat(fd, &info) < 0)
        fail(errno);
    struct path_beneath_attr rule = {S_ISDIR(info.st_mode) ? access : access & FILE_RIGHTS, fd};
    if (rule.allowed_access != 0)
        check(syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &rule, 0));
    close(fd);
}

/* As Python's os.execvpe: a name without a slash is searched on the PATH of the command's
 * environment (default /bin:/usr/bin; an empty entry is the working directory); the first
 * error other than "not there" wins over the last one. */
static void exec_searching(const char *file, char **argv, char **envp) {
    if (strchr(file, '/') != NULL) {
        execve(file, argv, envp);
        fail(errno);
    }
    const char *path = "/bin:/usr/bin";
    for (char **entry = envp; *entry != NULL; entry++)
        if (strncmp(*entry, "PATH=", 5) == 0)
            path = *entry + 5;
    int saved = 0, last = ENOENT;
    size_t file_length = strlen(file);
    for (const char *start = path;; start++) {
        const char *end = strchr(start, ':');
        size_t length = end ? (size_t)(end - start) : strlen(start);
        char *candidate = malloc(length + file_length + 2);
        if (candidate == NULL)
            fail(ENOMEM);
        if (length > 0) {
            memcpy(candidate, start, length);
            candidate[length] = '/';
            memcpy(candidate + length + 1, file, file_length + 1);
        } else {
            memcpy(candidate, file, file_length + 1);
        }
        execve(candidate, argv, envp);
        last = errno;
        if (last != ENOENT && last != ENOTDIR && saved == 0)
            saved = last;
        free(candidate);
        if (end == NULL)
            break;
        start = end;
    }
    fail(saved ? saved : last);
}

/* --- the records (see runner/native.py) ---------------------------------------------------- */
/* How many records of kind `op` the frame holds (for the argv and envp arrays). */
static size_t count_records(struct cursor records, unsigned char op) {
    size_t count = 0;
    while (records.at < records.end) {
        unsigned char kind = *records.at++;
        uint32_t length = take_u32(&records);
        need(&records, length);
        records.at += length;
        count += kind == op;
    }
    return count;
}

static void carry_out(struct cursor *c) {
    char **argv = calloc(count_records(*c, 'a') + 1, sizeof(char *));
    char **envp = calloc(count_records(*c, 'e') + 1, sizeof(char *));
    if (argv == NULL || envp == NULL)
        fail(ENOMEM);
    size_t argc = 0, envc = 0;
    char *executable = NULL;
    int ruleset = -1;
    while (c->at < c->end) {
        stage = "setup";
        unsigned char op = *c->at++;
        uint32_t length = take_u32(c);
        need(c, length);
        struct cursor field = {c->at, c->at + length};
        c->at += length;
        switch (op) {
        case 'c':
            stage = "chdir";
            check(chdir(take_string(&field, length)));
            break;
        case 'u':
            stage = "umask";
            umask((mode_t)(take_u32(&field) & 0777));
            break;
        case 'r': {
            stage = "rlimit";
            uint32_t which = take_u32(&field);
            struct rlimit limit = {(rlim_t)take_u64(&field), (rlim_t)take_u64(&field)};
            check(setrlimit((int)which, &limit));
            break;
        }
        case 'k':
            stage = "hook";
            drop_capabilities();
            break;
        case 'n':
            stage = "hook";
            check(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
            break;
        case 's':
            stage = "hook";
            install_seccomp(field.at, length);
            break;
        case 'f': {
            stage = "hook";
            uint32_t target = take_u32(&field);
            data_on_fd((int)target, field.at, (uint32_t)(field.end - field.at));
            break;
        }
        case 'L': {
            stage = "hook";
            struct ruleset_attr attr;
            attr.handled_access_fs = take_u64(&field);
            attr.handled_access_net = take_u64(&field);
            attr.scoped = take_u64(&field);
            uint32_t size = take_u32(&field);
            if (size > sizeof attr || ruleset >= 0)
                fail(EINVAL);
            ruleset = (int)syscall(SYS_landlock_create_ruleset, &attr, (size_t)size, 0u);
            check(ruleset);
            break;
        }
        case 'p': {
            stage = "hook";
            uint64_t access = take_u64(&field);
            if (ruleset < 0)
                fail(EINVAL);
            add_path_rule(ruleset, access, take_string(&field, (uint32_t)(field.end - field.at)));
            break;
        }
        case 't': {
            stage = "hook";
            struct net_port_attr rule;
            rule.allowed_access = take_u64(&field);
            rule.port = take_u64(&field);
            if (ruleset < 0)
                fail(EINVAL);
            check(syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_NET_PORT, &rule, 0));
            break;
        }
        case 'R': {
            stage = "hook";
            uint32_t flags = take_u32(&field);
            if (ruleset < 0)
                fail(EINVAL);
            check(syscall(SYS_landlock_restrict_self, ruleset, flags));
            close(ruleset);
            ruleset = -1;
            break;
        }
        case 'a':
        case 'e':
            if (op == 'a')
                argv[argc++] = take_string(&field, length);
            else
                envp[envc++] = take_string(&field, length);
            break;
        case 'x':
            executable = take_string(&field, length);
            break;
        default:
            fail(EPROTO);
        }
    }
    stage = "setup";
    /* A ruleset built but never enforced is a confinement the host asked for and did not
     * get: refuse rather than run the command without it. */
    if (ruleset >= 0 || executable == NULL || executable[0] == 0 || argc == 0)
        fail(EINVAL);
    stage = "exec";
    exec_searching(executable, argv, envp);
}

#endif
