package main

import "syscall"

type syscallRlimit = syscall.Rlimit

func getNofile(l *syscall.Rlimit) { syscall.Getrlimit(syscall.RLIMIT_NOFILE, l) }
