"""The training engine: model, optimizer, the step and epoch loop, evaluation, checkpoints, and fault handling.

`train.train` wires the lower stages (plan, memory, data, sync, logging) into one run; nothing below this
package imports it.
"""
