from hlrp_lab.lib.cpus import passive_openmp_wait

passive_openmp_wait()  # before any command imports torch
