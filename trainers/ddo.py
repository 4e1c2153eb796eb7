"""Launch script for DDO; the same parser and main as ``trl-likelihood ddo``.

```bash
python trainers/ddo.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B \
    --dataset_name trl-lib/Capybara \
    --alpha 1.0 --beta 0.1 --num_rounds 2 --max_new_tokens 256 --learning_rate 1e-6 \
    --use_peft --lora_r 16 \
    --output_dir Qwen2.5-0.5B-DDO

accelerate launch --multi_gpu --num_processes 2 trainers/ddo.py --config ddo.yaml
# two processes on a CPU-only machine (gloo); --use_cpu goes to the script
accelerate launch --multi_gpu --num_processes 2 --mixed_precision no trainers/ddo.py --config ddo.yaml --use_cpu
# DeepSpeed ZeRO-2/3 or FSDP2: a config from trainers/accelerate_configs (README, "engines")
accelerate launch --config_file trainers/accelerate_configs/zero3.yaml trainers/ddo.py --config ddo.yaml
```

Data: what ``trl sft`` takes (``text``, ``messages``, ``prompt``+``completion``). Fakes are the reference's samples
for the same prompts (from the first token for plain text). With ``--use_peft`` the reference is the base model with
the adapter disabled, and later rounds keep a snapshot of the adapter: one model in memory.
"""

import sys

from trl_likelihood.entry import main
from trl_likelihood.methods import method_of_script

if __name__ == "__main__":
    sys.exit(main([method_of_script(__file__), *sys.argv[1:]]))
