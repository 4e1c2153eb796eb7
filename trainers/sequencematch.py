"""Launch script for SequenceMatch; the same parser and main as ``trl-likelihood sequencematch``.

```bash
python trainers/sequencematch.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B \
    --dataset_name trl-lib/Capybara \
    --noise_prob 0.1 --chi2_coef 0.5 --sm_weight 0.5 --bc_steps 200 --learning_rate 1e-5 \
    --use_peft --lora_r 16 \
    --output_dir Qwen2.5-0.5B-SequenceMatch

accelerate launch --multi_gpu --num_processes 2 trainers/sequencematch.py --config sequencematch.yaml
# two processes on a CPU-only machine (gloo); --use_cpu goes to the script
accelerate launch --multi_gpu --num_processes 2 --mixed_precision no \
    trainers/sequencematch.py --config sequencematch.yaml --use_cpu
# DeepSpeed ZeRO-2/3 or FSDP2: a config from trainers/accelerate_configs (README, "engines")
accelerate launch --config_file trainers/accelerate_configs/fsdp2.yaml trainers/sequencematch.py --config sm.yaml
```

Data: what ``trl sft`` takes (``text``, ``messages``, ``prompt``+``completion``). The ``<bkspc>`` token is added to the
tokenizer and the model; with ``--use_peft`` its embedding rows train through PEFT's ``trainable_token_indices``.
Rollouts for the replay buffer are sampled from the training prompts with the current policy, backspace allowed.
"""

import sys

from trl_likelihood.entry import main
from trl_likelihood.methods import method_of_script

if __name__ == "__main__":
    sys.exit(main([method_of_script(__file__), *sys.argv[1:]]))
