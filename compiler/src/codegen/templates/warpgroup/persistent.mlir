{{constants}}
      %acc0 = llvm.mlir.zero : {{acc}}
{{barriers}}
{{tile_list}}
        %bid = gpu.block_id x
        %G = gpu.grid_dim x
        %isprod = arith.cmpi uge, %tid, %c256 : index
        scf.if %isprod {
{{producer_head}}
        scf.for %s = %bid to %total step %G {
{{tile}}
          %pg0 = arith.muli %it, %cNK : index
{{produce_pass}}
        }
        nvvm.cp.async.wait.group 0
        } else {
{{tiles}}
{{tile}}
{{wait_turn}}
          %g0 = arith.muli %it, %cNK : index
          %wgr0 = arith.addi %r0, %wgr : index
          %active = arith.cmpi ult, %wgr0, %cnt : index
          %accs = scf.for %kc = %c0 to %cNK step %c1 iter_args(%a = %acc0) -> ({{acc}}) {
            %gi = arith.addi %g0, %kc : index
{{consume_chunk}}
{{pass_turn}}
{{pass_tail}}
        }
