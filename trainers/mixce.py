"""Train with MixCE (forward + self-reinforced reverse cross-entropy): TRL's SFT script with MixCETrainer.

Same parser and main function as ``trl-likelihood mixce`` (``trl_likelihood.cli``); every ``trl sft`` flag works,
plus ``--eta`` (1.0 is plain SFT, 0.0 is DFT).

# Full training
```bash
python trainers/mixce.py \
    --model_name_or_path Qwen/Qwen2-0.5B \
    --dataset_name trl-lib/Capybara \
    --eta 0.5 \
    --learning_rate 2.0e-5 \
    --num_train_epochs 1 \
    --per_device_train_batch_size 2 \
    --gradient_accumulation_steps 8 \
    --output_dir Qwen2-0.5B-MixCE \
    --push_to_hub
```

# LoRA (add --load_in_4bit for QLoRA), on two GPUs, from a YAML file of the same flags; for DeepSpeed ZeRO-2/3 or
# FSDP2 add e.g. --config_file trainers/accelerate_configs/zero3.yaml (README, "engines")
```bash
accelerate launch --num_processes 2 trainers/mixce.py \
    --config mixce.yaml \
    --use_peft \
    --lora_r 32 \
    --lora_alpha 16 \
    --learning_rate 2.0e-4
```

# A local file instead of a Hub dataset, on CPU; then two CPU processes over gloo (without --multi_gpu accelerate
# starts one process; --use_cpu goes to the script, as accelerate's own --cpu also starts one)
```bash
python trainers/mixce.py --model_name_or_path Qwen/Qwen2-0.5B --dataset_name data/train.jsonl \
    --use_cpu --max_steps 10 --output_dir out
accelerate launch --multi_gpu --num_processes 2 --mixed_precision no trainers/mixce.py --config mixce.yaml --use_cpu
```
"""

import sys

from trl_likelihood.entry import main
from trl_likelihood.methods import method_of_script

if __name__ == "__main__":
    sys.exit(main([method_of_script(__file__), *sys.argv[1:]]))
