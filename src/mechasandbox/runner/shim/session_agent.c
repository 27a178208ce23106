/*
 * mechasandbox-agent: the long-lived process of a session, inside its sandbox, that runs
 * each command on request (see docs/sessions.md and runner/session_protocol.py).
 *
 *     mechasandbox-agent [--connect PATH | --pipes] [--idle-ms N] [--lifetime-ms N]
 *                        [--pid-namespace] [--kill-bound-ms N]
 *     mechasandbox-agent --protocol
 *
 * The control channel: its stdin, a unix stream socket (default); the socket at PATH
 * (--connect); or frames read from stdin and written to stdout (--pipes: no descriptor
 * can travel, so every command's stdio goes as frames). Frames: a 4-byte big-endian length,
 * a type byte, the body (numbers little-endian). The agent says HELLO, then serves RUN,
 * INPUT, SIGNAL and KILL; it answers STARTED, OUTPUT, INPUT_TAKEN, TREE_LEFT, EXITED, ERROR,
 * and BYE when it ends on its own (idle, lifetime, SIGTERM, a tree it could not kill).
 *
 * A RUN carries the records of runner/native.py (the one-shot exec shim's) and how the
 * command's stdio comes: three descriptors attached to the frame (SCM_RIGHTS), or pipes of
 * the agent's own that it pumps as OUTPUT frames and fills from INPUT frames. The agent
 * forks; the child starts a session, dies with the agent, puts the stdio in place, closes
 * every other descriptor (the channel included) and carries the records out with the shim's
 * own code (records.h) before exec. One command at a time.
 *
 * What a command leaves running dies when it ends: the agent is a child subreaper and, once
 * the command's first process exits (or a KILL comes), kills every process the command left
 * (--pid-namespace: every process of the namespace but the agent and its init, by kill(-1);
 * else every descendant, frozen first), until none is left, before it answers EXITED. What
 * cannot be killed within --kill-bound-ms (default END_BOUND_MS) ends the session (fail
 * closed): TREE_LEFT before the last word, BYE, exit. It is not dumpable (no ptrace, no /proc/PID/fd
 * from an unprivileged command); the channel is never open in a command. It ends when its
 * channel closes (the caller died), killing the command under way first; the sandbox around
 * it (bwrap --die-with-parent, a container's lifeline) ends with it.
 *
 * Built statically (make shim): it needs nothing from the sandbox's file system.
 */
#include "records.h"

#include <dirent.h>
#include <poll.h>
#include <sys/signalfd.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

/* The session protocol's version (runner/session_protocol.py's SESSION_PROTOCOL). */
#define SESSION_PROTOCOL 1

/* host -> agent */
#define MSG_RUN 'R'
#define MSG_INPUT 'I'
#define MSG_SIGNAL 'S'
#define MSG_KILL 'K'
/* agent -> host */
#define MSG_HELLO 'H'
#define MSG_STARTED 'P'
#define MSG_OUTPUT 'O'
#define MSG_INPUT_TAKEN 'A'
#define MSG_EXITED 'X'
#define MSG_ERROR 'E'
#define MSG_BYE 'B'
#define MSG_TREE_LEFT 'T'

#define STDIO_FDS 0
#define STDIO_FRAMED 1

#define BYE_IDLE 1
#define BYE_LIFETIME 2
#define BYE_SIGNAL 3
#define BYE_TREE 4

#define CHUNK 65536
/* The tree kill and the last output are bounded: a process stuck in the kernel, or one that
 * escaped with a pipe's end, cannot hold the session. */
#define END_BOUND_MS 2000

static int in_fd = 0, out_fd = 0, channel_is_socket = 1;
/* --pid-namespace: the agent is pid 1 or 2 of a pid namespace that is the session's alone. */
static int own_pid_namespace = 0;
/* --kill-bound-ms: how long a tree kill may take before the session ends instead. */
static long long kill_bound_ms = END_BOUND_MS;

static void end(unsigned char reason);

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* --- the channel ------------------------------------------------------------------------ */
static void put_u32(unsigned char *at, uint32_t value) { memcpy(at, &value, 4); }

/* One frame, written whole (blocking: the host always reads). The agent ends when the
 * host cannot be told anything any more. */
static void send_frame(unsigned char type, const void *body, size_t length) {
    unsigned char header[5];
    uint32_t total = (uint32_t)length + 1;
    header[0] = (unsigned char)(total >> 24);
    header[1] = (unsigned char)(total >> 16);
    header[2] = (unsigned char)(total >> 8);
    header[3] = (unsigned char)total;
    header[4] = type;
    struct iovec parts[2] = {{header, 5}, {(void *)body, length}};
    struct iovec *part = parts;
    int count = length ? 2 : 1;
    while (count > 0) {
        ssize_t wrote = writev(out_fd, part, count);
        if (wrote < 0 && errno == EINTR)
            continue;
        if (wrote < 0)
            _exit(0); /* the host is gone: nothing to serve */
        size_t left = (size_t)wrote;
        while (count > 0 && left >= part->iov_len) {
            left -= part->iov_len;
            part++;
            count--;
        }
        if (count > 0) {
            part->iov_base = (unsigned char *)part->iov_base + left;
            part->iov_len -= left;
        }
    }
}

static void send_error(int code, const char *where) {
    unsigned char body[4 + 64];
    size_t length = strlen(where) < 64 ? strlen(where) : 64;
    put_u32(body, (uint32_t)code);
    memcpy(body + 4, where, length);
    send_frame(MSG_ERROR, body, 4 + length);
}

/* What came on the channel and is not a whole frame yet, and the descriptors with it. */
static unsigned char *inbox;
static size_t inbox_length, inbox_size;
static int inbox_fds[MAX_FDS];
static int inbox_fd_count;

static void drop_fds(void) {
    for (int i = 0; i < inbox_fd_count; i++)
        close(inbox_fds[i]);
    inbox_fd_count = 0;
}

/* Read what the channel holds (it polled readable): 0 when it closed. */
static int read_channel(void) {
    if (inbox_size - inbox_length < CHUNK) {
        size_t size = inbox_size ? inbox_size * 2 : 4 * CHUNK;
        unsigned char *grown = realloc(inbox, size);
        if (grown == NULL)
            return 0;
        inbox = grown;
        inbox_size = size;
    }
    ssize_t got;
    if (channel_is_socket) {
        union {
            char space[CMSG_SPACE(MAX_FDS * sizeof(int))];
            struct cmsghdr align;
        } control;
        struct iovec part = {inbox + inbox_length, inbox_size - inbox_length};
        struct msghdr message = {0};
        message.msg_iov = &part;
        message.msg_iovlen = 1;
        message.msg_control = control.space;
        message.msg_controllen = sizeof control.space;
        got = recvmsg(in_fd, &message, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (got >= 0) {
            received_count = 0;
            keep_fds(&message);
            for (int i = 0; i < received_count; i++) {
                if (inbox_fd_count < MAX_FDS)
                    inbox_fds[inbox_fd_count++] = received[i];
                else
                    close(received[i]);
            }
            received_count = 0;
        }
    } else {
        got = read(in_fd, inbox + inbox_length, inbox_size - inbox_length);
    }
    if (got < 0)
        return errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK;
    inbox_length += (size_t)got;
    return got > 0;
}

/* --- the command under way ---------------------------------------------------------------- */
static struct {
    pid_t pid;  /* 0: none */
    int framed;
    int report; /* the report pipe's read end until its end (-1) */
    char report_text[96];
    size_t report_length;
    int reaped;
    int status;
    struct rusage usage;
    struct rusage before; /* the agent's RUSAGE_CHILDREN when it started */
    int output[3];        /* framed: the stdout and stderr pipes until their end (-1) */
    int input;            /* framed: the stdin pipe's write end (-1: closed) */
    unsigned char *pending;
    size_t pending_length, pending_done;
    int input_ended;
    long long ending_since; /* when the first process exited: the output's bound */
    int tree_left;          /* processes the tree kill could not kill (-1: uncounted) */
} command = {.report = -1, .output = {-1, -1, -1}, .input = -1};

static void close_fd(int *fd) {
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* Reap whatever is a zombie; the command's first process keeps its status. */
static void reap(void) {
    for (;;) {
        int status;
        struct rusage usage;
        pid_t pid = wait4(-1, &status, WNOHANG, &usage);
        if (pid <= 0)
            return;
        if (pid == command.pid && !command.reaped) {
            command.reaped = 1;
            command.status = status;
            command.usage = usage;
        }
    }
}

/* The children of every task of `pid` (a thread's children are its own), appended to
 * `found` (up to `capacity`); -1 when /proc cannot tell. */
static int children_of(pid_t pid, pid_t *found, int count, int capacity) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *tasks = opendir(path);
    if (tasks == NULL)
        return -1;
    struct dirent *task;
    while ((task = readdir(tasks)) != NULL) {
        if (task->d_name[0] == '.')
            continue;
        char children_path[320];
        snprintf(children_path, sizeof children_path, "/proc/%d/task/%s/children", (int)pid,
                 task->d_name);
        FILE *children = fopen(children_path, "re");
        if (children == NULL)
            continue;
        int child;
        while (fscanf(children, "%d", &child) == 1) {
            if (count < capacity)
                found[count++] = child;
        }
        fclose(children);
    }
    closedir(tasks);
    return count;
}

/* Whether the agent has a child still (living or not yet reaped). */
static int has_children(void) {
    siginfo_t info;
    return !(waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT | __WALL) < 0 &&
             errno == ECHILD);
}

static void pause_briefly(void) {
    struct timespec pause = {0, 200000};
    nanosleep(&pause, NULL);
}

#define MAX_TREE 16384

/* The agent in a pid namespace of the session's own (bubblewrap, a container: the host
 * says so with --pid-namespace, and the agent is its pid 1 or 2): every process of the
 * namespace but the agent and its init is a command's, and kill(-1) reaches each of them
 * at once, under the kernel's task list lock, so no fork can outrun it (a fork under way
 * when SIGKILL comes is abandoned). Repeated, reaping, until no process is left to signal.
 * Returns how many could not be killed (0: none; -1: some, uncounted). */
static int kill_namespace(long long until) {
    for (;;) {
        int sent = kill(-1, SIGKILL);
        int why = errno;
        reap();
        if (sent < 0 && why == ESRCH)
            return 0;
        if (now_ms() >= until)
            return -1;
        pause_briefly();
    }
}

/* Elsewhere (landlock: the host's pid namespace, where kill(-1) would reach the user's own
 * processes) the agent's descendants, found from /proc: each is stopped (SIGSTOP) before
 * its children are read, so a process that is found can fork no more (a fork under way
 * when the signal comes is abandoned) and, stopped, reaps none of its children, whose pids
 * then cannot be reused before the kill; the walk is repeated until it finds no process it
 * had not stopped, then every one is killed and reaped. Returns how many were left at the
 * bound (0: none). */
static int kill_descendants(long long until) {
    static pid_t stopped[MAX_TREE];
    static pid_t walk[MAX_TREE];
    int stopped_count = 0;
    /* The agent is a subreaper: an orphan of the tree becomes its child, never anyone
     * else's (a subreaper inside the tree hands its own orphans up when it dies), and a
     * process that exits has handed its children over before it can be reaped. So with
     * no child left, living or not yet reaped, nothing of the tree is left: no walk. */
    reap();
    if (!has_children())
        return 0;
    for (;;) {
        int fresh = 0;
        int walk_count = children_of(getpid(), walk, 0, MAX_TREE);
        if (walk_count < 0) { /* no /proc: the command's session is what can be reached */
            if (command.pid > 0)
                kill(-command.pid, SIGKILL);
            break;
        }
        for (int at = 0; at < walk_count; at++) {
            pid_t pid = walk[at];
            int known = 0;
            for (int i = 0; i < stopped_count && !known; i++)
                known = stopped[i] == pid;
            if (!known) {
                kill(pid, SIGSTOP);
                if (stopped_count < MAX_TREE)
                    stopped[stopped_count++] = pid;
                fresh++;
            }
            int more = children_of(pid, walk, walk_count, MAX_TREE);
            if (more > walk_count)
                walk_count = more;
        }
        if (fresh == 0 || stopped_count >= MAX_TREE || now_ms() >= until)
            break;
    }
    for (int i = 0; i < stopped_count; i++)
        kill(stopped[i], SIGKILL);
    for (;;) {
        reap();
        if (!has_children())
            return 0;
        if (now_ms() >= until) {
            int left = children_of(getpid(), walk, 0, MAX_TREE);
            return left > 0 ? left : -1;
        }
        /* what escaped the walk (found too late, or reparented here since): again */
        int count = children_of(getpid(), walk, 0, MAX_TREE);
        for (int i = 0; i < count; i++)
            kill(walk[i], SIGKILL);
        pause_briefly();
    }
}

/* Kill every process the commands left, bounded by --kill-bound-ms (a process stuck in the
 * kernel). What is left at the bound ends the session (see `finish_if_over`): returns how
 * many (0: none, -1: some). */
static int kill_tree(void) {
    long long until = now_ms() + kill_bound_ms;
    return own_pid_namespace ? kill_namespace(until) : kill_descendants(until);
}

static void cpu_and_rss(unsigned char *body) {
    struct rusage after;
    getrusage(RUSAGE_CHILDREN, &after);
    long long micros = (long long)(after.ru_utime.tv_sec - command.before.ru_utime.tv_sec) *
                           1000000 +
                       (after.ru_utime.tv_usec - command.before.ru_utime.tv_usec) +
                       (long long)(after.ru_stime.tv_sec - command.before.ru_stime.tv_sec) *
                           1000000 +
                       (after.ru_stime.tv_usec - command.before.ru_stime.tv_usec);
    uint64_t cpu = micros > 0 ? (uint64_t)micros : 0;
    uint64_t rss = (uint64_t)command.usage.ru_maxrss * 1024;
    memcpy(body, &cpu, 8);
    memcpy(body + 8, &rss, 8);
}

static void forget_command(void) {
    close_fd(&command.report);
    close_fd(&command.output[1]);
    close_fd(&command.output[2]);
    close_fd(&command.input);
    free(command.pending);
    command.pending = NULL;
    command.pending_length = command.pending_done = 0;
    command.input_ended = 0;
    command.pid = 0;
    command.reaped = 0;
    command.report_length = 0;
    command.ending_since = 0;
    command.tree_left = 0;
}

/* The command is over once its first process was reaped, the report pipe reached its end
 * and (framed) its output did too or its bound passed: the tree is killed, the last word
 * said. */
static void finish_if_over(void) {
    if (command.pid == 0 || !command.reaped)
        return;
    if (command.ending_since == 0) {
        command.ending_since = now_ms();
        /* before the last output: nothing may write after it */
        int left = kill_tree();
        if (left != 0 && command.tree_left == 0)
            command.tree_left = left;
    }
    int output_open = command.output[1] >= 0 || command.output[2] >= 0;
    if ((command.report >= 0 || output_open) && now_ms() - command.ending_since < END_BOUND_MS)
        return;
    for (int stream = 1; stream <= 2; stream++) {
        if (command.output[stream] >= 0) {
            unsigned char end = (unsigned char)stream;
            send_frame(MSG_OUTPUT, &end, 1);
        }
    }
    if (command.tree_left != 0) {
        unsigned char left[4];
        put_u32(left, (uint32_t)(command.tree_left > 0 ? command.tree_left : 0));
        send_frame(MSG_TREE_LEFT, left, sizeof left);
    }
    if (command.report_length > 0) {
        command.report_text[command.report_length] = 0;
        char *colon = strchr(command.report_text, ':');
        send_error(atoi(command.report_text), colon ? colon + 1 : "setup");
    } else {
        unsigned char body[20];
        put_u32(body, (uint32_t)command.status);
        cpu_and_rss(body + 4);
        send_frame(MSG_EXITED, body, sizeof body);
    }
    int left = command.tree_left;
    forget_command();
    if (left != 0) /* fail closed: nothing of it may meet the next command */
        end(BYE_TREE);
}

/* --- the messages ------------------------------------------------------------------------- */
static void start_command(unsigned char mode, const unsigned char *records, size_t length) {
    if (command.pid != 0) {
        drop_fds();
        send_error(EBUSY, "busy");
        return;
    }
    int stdio[3] = {-1, -1, -1};
    int ours[3] = {-1, -1, -1}; /* framed: the agent's ends */
    int report[2];
    if (mode == STDIO_FDS) {
        if (inbox_fd_count != 3) {
            drop_fds();
            send_error(EBADF, "stdio");
            return;
        }
        memcpy(stdio, inbox_fds, sizeof stdio);
        inbox_fd_count = 0;
    } else if (mode == STDIO_FRAMED) {
        drop_fds();
        for (int i = 0; i < 3; i++) {
            int pair[2];
            if (pipe2(pair, O_CLOEXEC) < 0) {
                for (int j = 0; j < 3; j++) {
                    close_fd(&stdio[j]);
                    close_fd(&ours[j]);
                }
                send_error(errno, "stdio");
                return;
            }
            stdio[i] = i == 0 ? pair[0] : pair[1];
            ours[i] = i == 0 ? pair[1] : pair[0];
        }
        fcntl(ours[0], F_SETFL, O_NONBLOCK);
    } else {
        drop_fds();
        send_error(EPROTO, "stdio");
        return;
    }
    if (pipe2(report, O_CLOEXEC) < 0) {
        int code = errno;
        for (int j = 0; j < 3; j++) {
            close_fd(&stdio[j]);
            close_fd(&ours[j]);
        }
        send_error(code, "setup");
        return;
    }
    getrusage(RUSAGE_CHILDREN, &command.before);
    pid_t pid = fork();
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        report_fd = fcntl(report[1], F_DUPFD_CLOEXEC, REPORT_FD_FLOOR);
        if (report_fd < 0)
            report_fd = report[1];
        stage = "setsid";
        check(setsid());
        stage = "pdeathsig";
        check(prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0));
        memcpy(received, stdio, sizeof stdio);
        received_count = 3;
        put_stdio(); /* the channel, the signalfd, the agent's pipe ends: all closed */
        struct cursor cursor = {records, records + length};
        carry_out(&cursor);
        _exit(127);
    }
    int code = errno;
    close(report[1]);
    for (int i = 0; i < 3; i++)
        close_fd(&stdio[i]);
    if (pid < 0) {
        close(report[0]);
        for (int j = 0; j < 3; j++)
            close_fd(&ours[j]);
        send_error(code, "fork");
        return;
    }
    command.pid = pid;
    command.framed = mode == STDIO_FRAMED;
    command.report = report[0];
    command.input = ours[0];
    command.output[1] = ours[1];
    command.output[2] = ours[2];
}

static void take_input(const unsigned char *data, size_t length) {
    if (command.pid == 0 || command.input < 0) {
        send_frame(MSG_INPUT_TAKEN, NULL, 0); /* nobody reads it: taken, and dropped */
        return;
    }
    if (length == 0) {
        command.input_ended = 1;
        if (command.pending_done == command.pending_length)
            close_fd(&command.input);
        send_frame(MSG_INPUT_TAKEN, NULL, 0);
        return;
    }
    unsigned char *grown = realloc(command.pending, command.pending_length + length);
    if (grown == NULL)
        _exit(1);
    command.pending = grown;
    memcpy(command.pending + command.pending_length, data, length);
    command.pending_length += length;
}

static void write_input(void) {
    ssize_t wrote = write(command.input, command.pending + command.pending_done,
                          command.pending_length - command.pending_done);
    if (wrote < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (wrote < 0) { /* the command closed its stdin: the rest is not wanted */
        close_fd(&command.input);
        command.pending_done = command.pending_length;
    } else {
        command.pending_done += (size_t)wrote;
    }
    if (command.pending_done == command.pending_length) {
        command.pending_done = command.pending_length = 0;
        if (command.input_ended)
            close_fd(&command.input);
        send_frame(MSG_INPUT_TAKEN, NULL, 0);
    }
}

static void handle_frame(unsigned char type, const unsigned char *body, size_t length) {
    if (type != MSG_RUN)
        drop_fds();
    switch (type) {
    case MSG_RUN:
        if (length < 1) {
            drop_fds();
            send_error(EPROTO, "setup");
            return;
        }
        start_command(body[0], body + 1, length - 1);
        break;
    case MSG_INPUT:
        take_input(body, length);
        break;
    case MSG_SIGNAL: {
        uint32_t number;
        if (length == 4 && command.pid != 0 && !command.reaped) {
            memcpy(&number, body, 4);
            kill(command.pid, (int)number);
        }
        break;
    }
    case MSG_KILL:
        if (command.pid != 0 && !command.reaped) {
            int left = kill_tree();
            if (left != 0 && command.tree_left == 0)
                command.tree_left = left;
        }
        break;
    default:
        break; /* a newer host's message this agent does not know */
    }
}

/* Every whole frame in the inbox, in order; 0 on a frame that cannot be one. */
static int handle_inbox(void) {
    size_t at = 0;
    while (inbox_length - at >= 4) {
        const unsigned char *h = inbox + at;
        uint32_t size = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
        if (size == 0 || size > MAX_FRAME + 16)
            return 0;
        if (inbox_length - at - 4 < size)
            break;
        handle_frame(h[4], h + 5, size - 1);
        at += 4 + size;
    }
    memmove(inbox, inbox + at, inbox_length - at);
    inbox_length -= at;
    return 1;
}

/* --- the loop ------------------------------------------------------------------------------ */
static int connect_to(const char *path) {
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof address.sun_path)
        return -1;
    strcpy(address.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) < 0)
        return -1;
    return fd;
}

static void end(unsigned char reason) {
    if (command.pid != 0)
        kill_tree();
    if (reason)
        send_frame(MSG_BYE, &reason, 1);
    _exit(0);
}

int main(int argc, char **argv) {
    long long idle_ms = 0, lifetime_ms = 0;
    const char *connect_path = NULL;
    int pipes = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--protocol") == 0) {
            printf("session %d records %d\n", SESSION_PROTOCOL, PROTOCOL);
            return 0;
        } else if (strcmp(argv[i], "--kill-bound-ms") == 0 && i + 1 < argc) {
            kill_bound_ms = atoll(argv[++i]);
        } else if (strcmp(argv[i], "--pid-namespace") == 0) {
            own_pid_namespace = 1;
        } else if (strcmp(argv[i], "--pipes") == 0) {
            pipes = 1;
        } else if (strcmp(argv[i], "--connect") == 0 && i + 1 < argc) {
            connect_path = argv[++i];
        } else if (strcmp(argv[i], "--idle-ms") == 0 && i + 1 < argc) {
            idle_ms = atoll(argv[++i]);
        } else if (strcmp(argv[i], "--lifetime-ms") == 0 && i + 1 < argc) {
            lifetime_ms = atoll(argv[++i]);
        } else {
            fprintf(stderr, "mechasandbox-agent: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    report_fd = 2; /* a failure of the agent's own set-up, before the channel works */
    /* kill(-1) outside a namespace of the session's own would reach the user's processes:
     * the agent must be its first process or the first's child (on the host, pids 1 and 2
     * are init and kthreadd). */
    if (own_pid_namespace && !(getpid() == 1 || (getpid() == 2 && getppid() == 1))) {
        fprintf(stderr, "mechasandbox-agent: --pid-namespace, but pid %d is not the first of "
                        "its namespace\n", (int)getpid());
        return 2;
    }
    if (connect_path != NULL) {
        in_fd = out_fd = connect_to(connect_path);
        if (in_fd < 0) {
            fprintf(stderr, "mechasandbox-agent: cannot connect to %s: %s\n", connect_path,
                    strerror(errno));
            return 2;
        }
    } else if (pipes) {
        in_fd = 0;
        out_fd = 1;
        channel_is_socket = 0;
    }
    if (channel_is_socket) {
        int type;
        socklen_t size = sizeof type;
        if (getsockopt(in_fd, SOL_SOCKET, SO_TYPE, &type, &size) < 0 || type != SOCK_STREAM) {
            fprintf(stderr, "mechasandbox-agent: the channel is not a stream socket\n");
            return 2;
        }
    }
    /* A subreaper: what a command leaves behind comes back here to be killed. Not dumpable:
     * a command (no capability) can neither ptrace it nor open its /proc/PID/fd. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
        fprintf(stderr, "mechasandbox-agent: prctl: %s\n", strerror(errno));
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    sigset_t handled;
    sigemptyset(&handled);
    sigaddset(&handled, SIGCHLD);
    sigaddset(&handled, SIGTERM);
    sigaddset(&handled, SIGINT);
    sigaddset(&handled, SIGHUP);
    sigprocmask(SIG_BLOCK, &handled, NULL);
    int signals = signalfd(-1, &handled, SFD_CLOEXEC | SFD_NONBLOCK);
    if (signals < 0) {
        fprintf(stderr, "mechasandbox-agent: signalfd: %s\n", strerror(errno));
        return 2;
    }
    /* Nothing of the agent's own goes to a command: its stdio stays with the channel. */
    unsigned char hello[8];
    put_u32(hello, SESSION_PROTOCOL);
    put_u32(hello + 4, (uint32_t)getpid());
    send_frame(MSG_HELLO, hello, sizeof hello);

    long long started = now_ms(), idle_since = started;
    for (;;) {
        struct pollfd fds[6];
        int count = 0;
        fds[count++] = (struct pollfd){in_fd, POLLIN, 0};
        fds[count++] = (struct pollfd){signals, POLLIN, 0};
        int report_at = -1, input_at = -1, output_at[3] = {-1, -1, -1};
        if (command.report >= 0) {
            report_at = count;
            fds[count++] = (struct pollfd){command.report, POLLIN, 0};
        }
        for (int stream = 1; stream <= 2; stream++) {
            if (command.output[stream] >= 0) {
                output_at[stream] = count;
                fds[count++] = (struct pollfd){command.output[stream], POLLIN, 0};
            }
        }
        if (command.input >= 0 && command.pending_length > command.pending_done) {
            input_at = count;
            fds[count++] = (struct pollfd){command.input, POLLOUT, 0};
        }
        long long now = now_ms(), wake = -1;
        if (lifetime_ms > 0)
            wake = started + lifetime_ms;
        if (idle_ms > 0 && command.pid == 0 && (wake < 0 || idle_since + idle_ms < wake))
            wake = idle_since + idle_ms;
        if (command.ending_since > 0) {
            long long bound = command.ending_since + END_BOUND_MS;
            if (wake < 0 || bound < wake)
                wake = bound;
        }
        int timeout = wake < 0 ? -1 : (int)(wake > now ? (wake - now) : 0);
        int ready = poll(fds, (nfds_t)count, timeout);
        if (ready < 0 && errno != EINTR)
            end(0);
        now = now_ms();
        if (lifetime_ms > 0 && now >= started + lifetime_ms)
            end(BYE_LIFETIME);
        if (idle_ms > 0 && command.pid == 0 && now >= idle_since + idle_ms)
            end(BYE_IDLE);
        if (ready <= 0) {
            finish_if_over();
            continue;
        }
        if (fds[1].revents) {
            struct signalfd_siginfo info;
            while (read(signals, &info, sizeof info) == sizeof info) {
                /* As PID 1 of its pid namespace (a container's process), a signal sent
                 * from inside the namespace (a command's: the sender's pid there; one from
                 * outside, the engine's stop, reads 0) asks nothing: a command must not end
                 * its session, as the kernel spares an init what it has no handler for. */
                if (info.ssi_signo != SIGCHLD && !(getpid() == 1 && info.ssi_pid != 0))
                    end(BYE_SIGNAL);
            }
            reap();
        }
        if (report_at >= 0 && fds[report_at].revents) {
            size_t room = sizeof command.report_text - 1 - command.report_length;
            ssize_t got = read(command.report, command.report_text + command.report_length, room);
            if (got > 0) {
                command.report_length += (size_t)got;
            } else if (got == 0 || errno != EINTR) {
                close_fd(&command.report);
                if (command.report_length == 0) {
                    unsigned char pid[4];
                    put_u32(pid, (uint32_t)command.pid);
                    send_frame(MSG_STARTED, pid, sizeof pid);
                }
            }
        }
        for (int stream = 1; stream <= 2; stream++) {
            int at = output_at[stream];
            if (at < 0 || !fds[at].revents)
                continue;
            unsigned char buffer[1 + CHUNK];
            buffer[0] = (unsigned char)stream;
            ssize_t got = read(command.output[stream], buffer + 1, CHUNK);
            if (got > 0) {
                send_frame(MSG_OUTPUT, buffer, 1 + (size_t)got);
            } else if (got == 0 || errno != EINTR) {
                close_fd(&command.output[stream]);
                send_frame(MSG_OUTPUT, buffer, 1); /* its end */
            }
        }
        if (input_at >= 0 && fds[input_at].revents)
            write_input();
        if (fds[0].revents) {
            if (!read_channel() || !handle_inbox())
                end(0); /* the host is gone (or spoke nonsense): the session ends */
        }
        int was_running = command.pid != 0;
        finish_if_over();
        if (was_running && command.pid == 0)
            idle_since = now_ms();
    }
}
