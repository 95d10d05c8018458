"""The flow family's samplers, all ComfyUI's or the pack's nodes (bench/product's SamplerConfig):

the teacher with ComfyUI's ``euler`` on ``simple`` (for SD3's 1000-entry table, ``simple`` at 50 steps is exactly
the distillation grid's 50 sigmas) at the teacher's CFG, also the 50-step reference; the TCD student with the TCD
Scheduler + TCD Sampler (gamma 0 / 0.3 / 0.5; on a flow model the scheduler's sigmas are the table entries the node
trains at, tests/test_distill_flow_node.py); the LCM student with ComfyUI's ``lcm`` on ``sgm_uniform`` and on the TCD
schedule; students at CFG 1.
"""

from __future__ import annotations

from bench.product.sampling import CONTROL_SAMPLERS, LCM_SAMPLERS, TCD_SAMPLERS, SamplerConfig, Samplers

EULER = SamplerConfig("euler (simple)", "ksampler", "euler", "simple")
FLOW_SAMPLERS = Samplers(
    teacher=(EULER,),
    reference=EULER,
    tcd=TCD_SAMPLERS,
    lcm=LCM_SAMPLERS,
    control=CONTROL_SAMPLERS,
)
