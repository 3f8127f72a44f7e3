"""Task types: how a sequence model's outputs meet the targets (head shape, loss, metrics).

Every dataset declares one task type; the model builder and the trainer read everything else from it, so a dataset
module never touches the training loop.

| task type         | head reads            | target                         | loss                               |
|-------------------|-----------------------|--------------------------------|------------------------------------|
| classify_last     | last state            | class id (B,)                  | cross-entropy                      |
| classify_each     | every state           | class id per step (B, T)       | cross-entropy per target token     |
| multilabel_each   | every state           | 0/1 per key per step (B, T, K) | BCE summed over keys, mean/frame   |
| tag               | every state           | tag id per token (B, T) + mask | cross-entropy over real tokens     |
| regression        | last state            | real vector (B, D)             | mean squared error                 |
| regression_each   | every state           | real vector per step + mask    | MSE over unmasked elements         |
"""

from rnnrepro.tasks.base import TASKS, Task, TaskType, build_task

__all__ = ["TASKS", "Task", "TaskType", "build_task"]
