"""Network pieces shared by the packages: ``layers`` (attention, GPT-2 and adaLN blocks,
timestep and label embedders) and ``flops`` (multiply-add counting, the papers' "Gflops")."""
