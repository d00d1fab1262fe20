        %ce{{j}}_{{e}} = arith.constant {{e}} : index
        %kx{{j}}_{{e}} = arith.addi %ka{{j}}, %ce{{j}}_{{e}} : index
        %kin{{j}}_{{e}} = arith.cmpi ult, %kx{{j}}_{{e}}, %cSk : index
        %key{{j}}_{{e}} = arith.minui %kx{{j}}_{{e}}, %cSk1 : index
