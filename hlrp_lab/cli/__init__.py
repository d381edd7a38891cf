from hlrp_lab.lib.cpus import short_openmp_spin

short_openmp_spin()  # before any command imports torch
