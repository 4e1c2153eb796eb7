"""Launch script for the implicit PRM; the same parser and main as ``trl-likelihood implicit-prm``.

```bash
python trainers/implicit_prm.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name your/rollouts-with-verdicts \
    --loss_type ce --beta 0.05 --learning_rate 5e-7 \
    --use_peft --lora_r 16 \
    --output_dir Qwen2.5-0.5B-ImplicitPRM

accelerate launch --multi_gpu --num_processes 2 trainers/implicit_prm.py --config prm.yaml
# two processes on a CPU-only machine (gloo); --use_cpu goes to the script
accelerate launch --multi_gpu --num_processes 2 --mixed_precision no \
    trainers/implicit_prm.py --config implicit_prm.yaml --use_cpu
# DeepSpeed ZeRO-2/3 or FSDP2: a config from trainers/accelerate_configs (README, "engines")
accelerate launch --config_file trainers/accelerate_configs/zero3.yaml trainers/implicit_prm.py --config prm.yaml
```

Data: ``prompt, completion, label`` (unpaired), ``prompt, completions, labels`` (lists), or ``prompt, chosen,
rejected`` (pairs). With ``--use_peft`` the reference is the base model with the adapter disabled.
"""

import sys

from trl_likelihood.entry import main
from trl_likelihood.methods import method_of_script

if __name__ == "__main__":
    sys.exit(main([method_of_script(__file__), *sys.argv[1:]]))
