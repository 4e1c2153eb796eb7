"""Launch script for the stepwise (explicit) PRM; the same parser and main as ``trl-likelihood stepwise-prm``.

```bash
python trainers/stepwise_prm.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/math_shepherd \
    --learning_rate 1e-5 \
    --use_peft --lora_r 16 \
    --output_dir Qwen2.5-0.5B-StepwisePRM

accelerate launch --multi_gpu --num_processes 2 trainers/stepwise_prm.py --config prm.yaml
# two processes on a CPU-only machine (gloo); --use_cpu goes to the script
accelerate launch --multi_gpu --num_processes 2 --mixed_precision no \
    trainers/stepwise_prm.py --config stepwise_prm.yaml --use_cpu
# DeepSpeed ZeRO-2/3 or FSDP2: a config from trainers/accelerate_configs (README, "engines")
accelerate launch --config_file trainers/accelerate_configs/zero2.yaml trainers/stepwise_prm.py --config prm.yaml
```

Data: TRL's stepwise supervision, ``prompt`` (text or messages), ``completions`` (the steps) and ``labels`` (one bool
per step). Each step is followed by ``--step_separator`` (default: a newline; a shell passes ``"\\n"`` as a backslash
and an n, so write ``$'\\n'``). The model is loaded as a 2-label token classifier; with ``--use_peft`` the adapter is a
``TOKEN_CLS`` one (``--lora_task_type`` may stay at its default) and the classifier head is trained in full. QLoRA:
add ``--load_in_4bit``. Score with ``trl_likelihood.StepwisePRM.from_pretrained(output_dir)``.
"""

import sys

from trl_likelihood.entry import main
from trl_likelihood.methods import method_of_script

if __name__ == "__main__":
    sys.exit(main([method_of_script(__file__), *sys.argv[1:]]))
