"""The command-line programs: thpcore, uhugepaged, thpmaps, fidelity, calibrate."""
