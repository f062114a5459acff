"""The stand-in's ``hailo_platform.pyhailort`` package (see :mod:`tests.standins.hailo_platform`)."""
