// Facts about the current CUDA device that the launchers need (host code, torch-free), each
// cached per device after the first query.
#pragma once

namespace kbit::cuda {

// Multiprocessor count of the current device (132 if it cannot be read).
int sm_count();

// Compute capability of the current device as 10 * major + minor (90 for an H100); 0 if it cannot
// be read.
int compute_capability();

// Whether launches may use programmatic dependent launch: sm_90 and up; KBIT_NO_PDL=1 turns it
// off (for A/B timing).
bool pdl_allowed();

}  // namespace kbit::cuda
