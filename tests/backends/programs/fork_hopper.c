/* fork_hopper N FILE: N processes, each in a session of its own, that fork and exit in a
 * loop (each pid lives for one fork), so that a tree walk killing the pids it listed finds
 * them gone; the first writes the time to FILE every second it survives. Exits after
 * 0.3 s, leaving them behind (tests/backends/test_session_attacks.py). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    int count = atoi(argv[1]);
    for (int i = 0; i < count; i++) {
        if (fork() != 0)
            continue;
        setsid();
        time_t last = 0;
        for (;;) {
            pid_t child = fork();
            if (child > 0)
                _exit(0);
            if (child < 0)
                continue;
            time_t now = time(NULL);
            if (i == 0 && now != last) {
                last = now;
                int fd = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0644);
                if (fd >= 0) {
                    char line[32];
                    int length = snprintf(line, sizeof line, "%ld\n", (long)now);
                    if (write(fd, line, (size_t)length) < 0) {
                        /* nothing to do */
                    }
                    close(fd);
                }
            }
        }
    }
    struct timespec pause = {0, 300000000};
    nanosleep(&pause, NULL);
    return 0;
}
