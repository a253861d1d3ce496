/* fork() while other threads allocate and free secure memory.
 *
 * Built by tests/test_native_fork_race.py against csrc/securemem.c, outside
 * Python (whose GIL would make the window too narrow to hit).  Two threads
 * take regions from the allocator's cache and give them back as fast as
 * they can; the main thread forks FORKS times.  Each child checks that it
 * started with an empty cache and that the allocator works, then exits 0.
 * A child that crashes or exits otherwise is counted as bad.
 *
 *   fork_race FORKS [control]
 *
 * "control" makes every 100th child crash on purpose: the count sees it.
 * Prints "forks N bad B" and exits 1 when B > 0. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "securemem.h"

static volatile int stop;

static void *hammer(void *arg)
{
    nomyo_region *r[8];
    int i;
    (void)arg;
    while (!stop) {
        for (i = 0; i < 8; i++)
            r[i] = nomyo_alloc((size_t)(1 + i % 3) * 100, 0);
        for (i = 0; i < 8; i++)
            nomyo_free(r[i]);
    }
    return NULL;
}

static void child(int crash)
{
    nomyo_region *r;
    if (crash)
        raise(SIGSEGV);
    if (nomyo_cache_pages() != 0)
        _exit(3); /* the parent's cache must not follow into the child */
    r = nomyo_alloc(100, 0);
    if (r == NULL)
        _exit(4);
    nomyo_free(r);
    _exit(nomyo_cache_trim() == 1 ? 0 : 5);
}

int main(int argc, char **argv)
{
    int forks = argc > 1 ? atoi(argv[1]) : 0;
    int control = argc > 2 && strcmp(argv[2], "control") == 0;
    int bad = 0, i, status;
    pthread_t threads[2];
    if (forks <= 0 || nomyo_init() != 0)
        return 2;
    for (i = 0; i < 2; i++)
        if (pthread_create(&threads[i], NULL, hammer, NULL) != 0)
            return 2;
    for (i = 0; i < forks; i++) {
        pid_t pid = fork();
        if (pid < 0)
            return 2;
        if (pid == 0)
            child(control && i % 100 == 0);
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            bad++;
    }
    stop = 1;
    for (i = 0; i < 2; i++)
        pthread_join(threads[i], NULL);
    printf("forks %d bad %d\n", forks, bad);
    return bad != 0;
}
