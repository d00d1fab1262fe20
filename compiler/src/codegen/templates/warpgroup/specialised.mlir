{{barriers}}
        gpu.barrier
        %isprod = arith.cmpi uge, %tid, %c256 : index
        scf.if %isprod {
{{producer_head}}
        scf.for %pp = %c0 to %passes step %c1 {
          %pr0 = arith.muli %pp, %cP : index
          %pg0 = arith.muli %pp, %cNK : index
{{produce_pass}}
        }
        nvvm.cp.async.wait.group 0
        } else {
{{pass_head}}
{{consume_chunk}}
{{pass_tail}}
        }
