"""Neural processing units: the Hailo-10H of the AI HAT+ 2 (:mod:`assistant.npu.hailo`)."""
